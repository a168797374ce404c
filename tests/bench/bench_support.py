"""What the bench smoke tests share: the bench's paths, importing a bench
module, and the tiny idle run they start."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from types import ModuleType

from harness import ROOT

BENCH = ROOT / "bench"
IDLE = BENCH / "idle.py"


#: The load tool's module for each old bench/ module name.
MODULES = {"loadgen": "client", "wsclient": "wsframes", "hostile_workers": "attacks"}


def bench_module(name: str) -> ModuleType:
    """The load tool's module that was `bench/<name>.py`."""
    return importlib.import_module(f"engine.load.{MODULES.get(name, name)}")


def idle_command(results: Path, transport: str, clients: int, *extra: str) -> list[str]:
    """A short idle run that checks every client stayed (--check), without
    the recipe's Faye run (--peer none)."""
    return [
        sys.executable,
        str(IDLE),
        "--transport",
        transport,
        "--clients",
        str(clients),
        "--timeout",
        "2000",
        "--hold",
        "3",
        "--ramp-rate",
        "400",
        "--settle",
        "0.5",
        *extra,
        "--results-dir",
        str(results),
        "--no-progress",
        "--check",
        "--peer",
        "none",
    ]
