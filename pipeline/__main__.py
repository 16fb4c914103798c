"""`python -m pipeline COMMAND ...`: the `nws` command line (pipeline/cli.py), e.g. under a launcher that starts a
module (`torchrun -m pipeline pretrain ...`, `deepspeed --module pipeline pretrain ...`). `python -m pipeline run
...` stays the short form of `nws pipeline run ...` that the README and older scripts use."""

import sys

from pipeline.cli import main

if __name__ == "__main__":
    argv = sys.argv[1:]
    sys.exit(main(["pipeline", *argv] if argv[:1] == ["run"] else argv))
