"""`--replace` of the task loop: method folders holding tasks of another config are removed, so that method runs
again under the given config. Without it the loop refuses such a folder (loop.load_progress); the pipeline and
`nws incremental --replace` use this when the caller has said the new config is the folder's (pipeline.layout)."""

from __future__ import annotations

import shutil
from pathlib import Path

from base.layout import PROGRESS
from incremental.loop import run_hash
from nws.io import read_json


def drop_changed_methods(cfg, out: Path, methods: list[str], who: str) -> list[str]:
    """Remove out/<method> for each of `methods` whose stored tasks were made with another config (the settings
    that method reads: loop.run_hash); returns the methods removed, each named on stdout after `who`."""
    dropped = []
    for method in methods:
        progress = Path(out) / method / PROGRESS
        if progress.is_file() and read_json(progress).get("config_hash") != run_hash(cfg, method):
            print(f"{who} {method}: the incremental config changed; its earlier tasks are removed", flush=True)
            shutil.rmtree(Path(out) / method)
            dropped.append(method)
    return dropped
