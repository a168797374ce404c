"""Pytest hooks and fixtures; the harness they use is tests/harness.py.

The ``server`` fixture starts a server process around one test; extra
command-line arguments come from ``@pytest.mark.server_args("--timeout",
"2000", ...)``.  ``node_modules`` and ``node_bin`` install and find the
Node.js interop clients once per session.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import ServerProcess, ServerStartError, ensure_node_modules, start_server
from hypothesis import settings

# Property tests check results, never speed: a loaded CI machine must not fail
# them on Hypothesis's per-example deadline.
settings.register_profile("engine", deadline=None)
settings.load_profile("engine")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "server_args(*args): extra command-line arguments for the `server` fixture",
    )


@pytest.fixture
def server(request: pytest.FixtureRequest) -> Iterator[ServerProcess]:
    """A fresh server for one test; SIGTERM on teardown must give exit code 0."""
    marker = request.node.get_closest_marker("server_args")
    args = tuple(str(a) for a in marker.args) if marker else ()
    try:
        proc = start_server(*args)
    except ServerStartError as exc:
        pytest.fail(str(exc), pytrace=False)
    try:
        yield proc
    finally:
        proc.assert_stopped_cleanly()


@pytest.fixture(scope="session")
def node_modules() -> Path:
    """tests/interop/node_modules, installed once per session if missing."""
    return ensure_node_modules()


@pytest.fixture(scope="session")
def node_bin(node_modules: Path) -> str:
    node = shutil.which("node")
    assert node is not None
    return node
