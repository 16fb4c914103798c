# Two commands work on a fresh machine: `make demo` and `make test` (both run setup first when needed).
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.setup-stamp
NATIVE := native

.PHONY: setup native test lint bench clean help data pretrain incremental demo pipeline report ui submit
.DEFAULT_GOAL := help

help:  ## list the targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml scripts/setup.sh
	bash scripts/setup.sh
	@touch $@

setup: $(STAMP) $(NATIVE)  ## create .venv (torch first, then the project with every extra), build the search kernel

# the fused C++ search kernel (nws/search_native.py): its file name carries its source's hash, so this builds it
# whenever the source changed and is a no-op otherwise
$(NATIVE): $(STAMP)
	@$(PY) -c 'import nws.search_native as s; s.main()'

# one BLAS/OpenMP thread per process: the tests start several processes (2 ranks) on a 2-core machine, where
# oversubscribed threads make a step 10x slower
test: $(STAMP) $(NATIVE)  ## run the whole test suite (first line: the machine it ran on)
	@OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(PY) -m tests.machine
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(PY) -m pytest -q $(PYTEST_ARGS)

lint: $(STAMP) $(NATIVE)  ## ruff
	$(PY) -m ruff check .

bench: $(STAMP) $(NATIVE)  ## run the benchmarks and print their tables (see BENCHMARKS.md)
	$(PY) -m bench.search
	$(PY) -m bench.loaders
	$(PY) -m bench.pretrain

# every target below reads and writes one layout, the pipeline's: $(RUNS)/<name>/{data, seed<S>/{config.yaml,
# pretrain, incremental}, report} and the MLflow store $(RUNS)/mlflow.db (base/layout.py)
CONFIG ?= configs/demo.yaml
ARGS ?=
RUNS ?= runs
demo: $(STAMP) $(NATIVE)  ## the whole pipeline on the embedded digits (configs/demo.yaml): about 6 min on 2 CPU cores
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(PY) -m pipeline run -c configs/demo.yaml --runs-dir $(RUNS) $(ARGS)

pipeline: $(STAMP) $(NATIVE)  ## every stage of CONFIG, skipping unchanged ones (ARGS="--seed 1 --from incremental key=value")
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(PY) -m pipeline run -c $(CONFIG) --runs-dir $(RUNS) $(ARGS)

data: $(STAMP) $(NATIVE)  ## the data stage of CONFIG by hand: its data section -> runs/<name>/data (RUNS=... moves every target)
	$(PY) -m pipeline data prepare -c $(CONFIG) --runs-dir $(RUNS) $(ARGS)

pretrain: $(STAMP) $(NATIVE)  ## pool pretraining (+ plain backbone) of CONFIG by hand -> runs/<name>/seed<S>/pretrain
	$(PY) -m pipeline pretrain -c $(CONFIG) --runs-dir $(RUNS) $(ARGS)

incremental: $(STAMP) $(NATIVE)  ## the task-incremental stage of CONFIG by hand (every configured method; ARGS="--method nws")
	$(PY) -m pipeline incremental -c $(CONFIG) --runs-dir $(RUNS) $(ARGS)

report: $(STAMP) $(NATIVE)  ## results.json, results.md and plots/ of CONFIG's runs (runs/<name>/report)
	$(PY) -m pipeline report -c $(CONFIG) --runs-dir $(RUNS) $(ARGS)

PORT ?= 5000
ui: $(STAMP) $(NATIVE)  ## the MLflow UI of runs/mlflow.db on http://127.0.0.1:5000 (PORT=...; Ctrl-C stops it)
	$(PY) -m pipeline.ui --runs-dir $(RUNS) --port $(PORT)

submit: $(STAMP) $(NATIVE)  ## submit CONFIG to Slurm, a job per stage, seeds as arrays (ARGS="--seeds 3 --dry-run")
	$(VENV)/bin/nws cluster submit -c $(CONFIG) --runs-dir $(RUNS) $(ARGS)

clean:  ## remove caches (keeps .venv and runs/)
	find . -name __pycache__ -prune -exec rm -rf {} +
	rm -rf .pytest_cache .ruff_cache .hypothesis
