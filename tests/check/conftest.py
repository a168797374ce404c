"""Fixtures of the `engine check` tests: one engine for the module, with the
optional features the checks exercise (ack, timesync) and a short connect
hold so the timing checks take seconds."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from harness import ServerProcess, start_server

# --timeout 3000: every hold the checks wait out is 3 s; "at once" is < 1.5 s.
ENGINE_ARGS = ("--timeout", "3000", "--ack-extension", "--timesync-extension")
ALL_FEATURES = ["--ack", "--timesync", "--strict"]


@pytest.fixture(scope="module")
def engine() -> Iterator[ServerProcess]:
    server = start_server(*ENGINE_ARGS, target="engine")
    try:
        yield server
    finally:
        server.stop()
