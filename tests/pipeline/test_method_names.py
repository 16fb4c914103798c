"""Method names are checked when the config is read (issue 19): `incremental.methods=[nws,foo]` used to pass loading
and fail only after the data and pretraining stages, its error printed twice. Now every command that reads a config
exits 2 at once, printing the error once, naming the key, the bad name and the known methods, writing nothing."""

from __future__ import annotations

from pathlib import Path

import pytest

from incremental.method_names import available
from pipeline.cli import main
from tests.pipeline.fixtures import DEMO

METHOD_FILES = sorted(p.stem for p in (Path(__file__).resolve().parents[2] / "incremental" / "methods").glob("*.py")
                      if not p.stem.startswith("_"))
KNOWN = f"known methods: {', '.join(METHOD_FILES)}"


def test_the_known_methods_are_the_method_files():
    assert available() == METHOD_FILES and {"nws", "finetune", "supsup"} <= set(METHOD_FILES)


@pytest.mark.parametrize("command", [
    ["pipeline", "run", "-c", str(DEMO)],
    ["pretrain", "-c", str(DEMO)],
    ["incremental", "-c", str(DEMO)],
    ["report", "-c", str(DEMO)],
    ["cluster", "submit", "-c", str(DEMO), "--dry-run"],
])
@pytest.mark.parametrize("override,message", [
    ("incremental.methods=[nws,foo]", f"incremental.methods: unknown method 'foo'; {KNOWN}"),
    ("incremental.options={fooo: {lr_mask: 0.1}}", f"incremental.options: unknown method 'fooo'; {KNOWN}"),
])
def test_an_unknown_method_stops_every_command_at_once(command, override, message, tmp_path, monkeypatch, capfd):
    monkeypatch.chdir(tmp_path)  # the commands' default folders (runs/...) would be made here
    assert main([*command, override]) == 2
    err = capfd.readouterr().err
    assert err == f"error: {DEMO}: {message}\n"  # once, and nothing else
    assert list(tmp_path.iterdir()) == []  # no data, no pretraining, no folder


def test_a_method_option_of_nws_incremental_is_checked_before_any_work(tmp_path, monkeypatch, capfd):
    monkeypatch.chdir(tmp_path)
    assert main(["incremental", "-c", str(DEMO), "--method", "nws", "--method", "foo", "--method", "bar"]) == 2
    assert capfd.readouterr().err == f"error: --method: unknown methods 'foo', 'bar'; {KNOWN}\n"
    assert list(tmp_path.iterdir()) == []
