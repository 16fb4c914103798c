"""Progress bars that suit where the output goes: tqdm's bar on a terminal; in a log file (a Slurm job's output,
`make demo > log`) carriage returns would run every bar into one unreadable line, so there a bar prints a plain
line every LOG_SECONDS and its final state when it ends; a bar done within LOG_SECONDS prints nothing (the command's
summary follows)."""

from __future__ import annotations

import sys

from tqdm import tqdm

LOG_SECONDS = 30.0


class LineStream:
    """What tqdm writes, as whole lines: a redraw (after a carriage return) becomes a line of its own, blank
    erasures and repeats of the last line are dropped."""

    def __init__(self, stream):
        self.stream, self.last = stream, None

    def write(self, text: str) -> None:
        for part in text.replace("\r", "\n").split("\n"):
            line = part.strip()
            if line and line != self.last:
                self.stream.write(line + "\n")
                self.last = line

    def flush(self) -> None:
        self.stream.flush()


def bar(*, total: int, desc: str, unit: str = "img", enabled: bool = True, stream=None,
        tty: bool | None = None) -> tqdm:
    """A progress bar for `total` items on `stream` (default stderr): tqdm's own on a terminal, plain lines
    otherwise (`tty` overrides the check)."""
    stream = stream or sys.stderr
    if stream.isatty() if tty is None else tty:
        return tqdm(total=total, desc=desc, unit=unit, disable=not enabled, leave=False, file=stream)
    return tqdm(total=total, desc=desc, unit=unit, disable=not enabled, leave=True, file=LineStream(stream),
                mininterval=LOG_SECONDS, maxinterval=LOG_SECONDS, delay=LOG_SECONDS, ascii=True, ncols=100)
