"""engine/load/recipe.py: a recipe's figure options come first, the arguments
given win, and --peer none or an option that rules a peer out drops the peer."""

from __future__ import annotations

from engine.load.recipe import expand


def test_expand_puts_the_figure_first_and_the_arguments_win() -> None:
    figure = {"--clients": "19000", "--transport": "websocket", "--peer": "faye", "--tls": None}
    assert expand(figure, []) == [
        "--clients", "19000", "--transport", "websocket", "--peer", "faye", "--tls",
    ]  # fmt: skip
    assert expand(figure, ["--clients", "20", "--transport=long-polling"]) == [
        "--peer", "faye", "--tls", "--clients", "20", "--transport=long-polling",
    ]  # fmt: skip
    # --peer none: no peer, and the scenario never sees "none".
    assert expand(figure, ["--peer", "none", "--check"]) == [
        "--clients", "19000", "--transport", "websocket", "--tls", "--check",
    ]  # fmt: skip
    assert expand(figure, ["--peer=none"])[-1] == "--tls"
    # An option that rules a peer out drops the figure's peer.
    assert "--peer" not in expand(figure, ["--workers", "2"], without_peer=("--workers",))
    assert expand(figure, ["--peer", "faye"], without_peer=("--peer",))[-2:] == ["--peer", "faye"]
