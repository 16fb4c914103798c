"""The one `nws` command line (pipeline/cli.py): every command of the table answers --help, `python -m pipeline` is
the same command line under launchers (deepspeed's `--local_rank=N` before the command, `run` as the short form of
`pipeline run`); that nothing below imports it is tests/test_imports.py's."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.cli import COMMANDS, build_parser, main

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("words", [c.words for c in COMMANDS])
def test_every_command_answers_help(words, capsys):
    with pytest.raises(SystemExit) as done:
        main([*words.split(), "--help"])
    assert done.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: nws {words} ")


def test_the_module_form_under_launchers():
    run = [sys.executable, "-m", "pipeline"]
    deepspeed = subprocess.run([*run, "--local_rank=0", "pretrain", "--help"], cwd=ROOT, capture_output=True,
                               text=True, timeout=120)
    assert deepspeed.returncode == 0 and deepspeed.stdout.startswith("usage: nws pretrain "), deepspeed.stderr
    short = subprocess.run([*run, "run", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert short.returncode == 0 and short.stdout.startswith("usage: nws pipeline run "), short.stderr


def test_bad_input_is_exit_2_in_one_line(tmp_path, capsys):
    assert main(["data", "verify", str(tmp_path)]) == 2
    assert capsys.readouterr().err.count("\n") == 1
    assert build_parser().parse_args(["report", "--dir", "x"]).nws_command.words == "report"

