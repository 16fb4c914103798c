"""The names of the continual-learning methods: the modules of incremental/methods/, listed without importing them.

A config is checked when it is loaded (issue 19: `incremental.methods=[nws,foo]` passed loading and failed only
after the data and pretraining stages), and loading a config must stay cheap: the methods' package imports torch,
this module only reads the folder's file names. incremental.methods.get_method reads the same list.
"""

from __future__ import annotations

import pkgutil
from importlib.util import find_spec

from base.config import ConfigError


def available() -> list[str]:
    """Names of the method modules in incremental/methods/ (a file `<name>.py` defining METHOD)."""
    folders = find_spec("incremental.methods").submodule_search_locations  # finds the package, does not run it
    return sorted(m.name for m in pkgutil.iter_modules(folders) if not m.name.startswith("_"))


def unknown(names: list[str]) -> str | None:
    """Why `names` are not all methods (the unknown ones and the known ones), or None when they are."""
    known = available()
    bad = [name for name in names if name not in known]
    if not bad:
        return None
    return (f"unknown method{'s' if len(bad) > 1 else ''} {', '.join(map(repr, bad))}; known methods: "
            f"{', '.join(known)}")


def check(names: list[str], key: str) -> list[str]:
    """`names`, or a ConfigError that starts with `key` (the config key or option that gave them)."""
    why = unknown(names)
    if why:
        raise ConfigError(f"{key}: {why}")
    return names
