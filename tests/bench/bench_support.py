"""What the bench smoke tests share: the bench's paths, importing a bench
module, and the tiny idle run they start."""

from __future__ import annotations

import sys
from pathlib import Path
from types import ModuleType

from harness import ROOT

BENCH = ROOT / "bench"
IDLE = BENCH / "idle.py"


def bench_module(name: str) -> ModuleType:
    """`bench/<name>.py`, imported as the bench scripts import each other."""
    sys.path.insert(0, str(BENCH))
    try:
        return __import__(name)
    finally:
        sys.path.remove(str(BENCH))


def idle_command(results: Path, transport: str, clients: int, *extra: str) -> list[str]:
    """A short idle run that checks every client stayed (--check)."""
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
    ]
