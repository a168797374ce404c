"""The placeholder scheme of deploy/proxies/README.md, and every template
filled in by it (no proxy started)."""

from __future__ import annotations

from pathlib import Path

import pytest
from e2e.proxies.proxy_support import KINDS, PLACEHOLDER, TEMPLATES, render

VALUES = {
    "LISTEN_HOST": "127.0.0.1",
    "LISTEN_PORT": "8000",
    "WORKDIR": "/tmp/w",
    "PROXY_TIMEOUT": "60",
    "PROXY_TIMEOUT_MS": "60000",
}
NODES = [{"NAME": f"engine{i}", "HOST": "10.0.0.1", "PORT": str(8080 + i)} for i in (1, 2, 3)]


def test_a_node_line_is_repeated_per_node_and_the_rest_replaced() -> None:
    text = (
        "listen @LISTEN_PORT@\n"
        "  server @NODE_NAME@ @NODE_HOST@:@NODE_PORT@\n"
        "first @FIRST_NODE_PORT@\n"
    )
    assert render(text, VALUES, NODES) == (
        "listen 8000\n"
        "  server engine1 10.0.0.1:8081\n"
        "  server engine2 10.0.0.1:8082\n"
        "  server engine3 10.0.0.1:8083\n"
        "first 8081\n"
    )


def test_an_unknown_placeholder_is_an_error() -> None:
    with pytest.raises(KeyError, match="@LISTEN_PROT@"):
        render("listen @LISTEN_PROT@\n", VALUES, NODES)


def test_every_directory_is_a_tested_proxy() -> None:
    directories = {p.name for p in TEMPLATES.iterdir() if p.is_dir()}
    assert directories == set(KINDS)
    for kind in KINDS.values():
        assert (TEMPLATES / kind.name / kind.config).is_file(), kind


@pytest.mark.parametrize(
    "path", sorted(p for p in TEMPLATES.glob("*/*") if p.is_file()), ids=lambda p: p.name
)
def test_every_template_fills_in_completely(path: Path) -> None:
    text = render(path.read_text(), VALUES, NODES)
    assert not PLACEHOLDER.search(text), text
    if "@NODE_" in path.read_text():
        assert all(node["PORT"] in text for node in NODES), text
