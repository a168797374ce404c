#!/usr/bin/env python3
"""Fan-out: publish-to-delivery latency and delivered share when K of N
clients subscribe to one channel published at R messages/s, the engine
against Faye (the `fanout` scenario, engine/load/fanout.py).

    python bench/fanout.py                           # README Performance, row 3: 1,900 of
                                                     # 19,000 WebSocket clients, 500 messages
                                                     # at 50/s, Faye then the engine
    python bench/fanout.py --transport long-polling  # row 4

Any option of the scenario (`--help`) overrides the figure's; `--peer none`,
`--url` or `--server-cmd` drop Faye.
"""

import sys

from engine.load import fanout, recipe

FIGURE = {
    "--clients": "19000",
    "--subscribers": "1900",
    "--messages": "500",
    "--rate": "50",
    "--transport": "websocket",
    "--peer": "faye",
}
WITHOUT_PEER = ("--url", "--server-cmd")

if __name__ == "__main__":
    sys.exit(recipe.run(fanout.main, FIGURE, WITHOUT_PEER))
