#!/usr/bin/env python3
"""Idle clients: the server's memory per held client and CPU per heartbeat
cycle, the engine against Faye (the `idle` scenario, engine/load/idle.py).

    python bench/idle.py                           # README Performance, row 1: 19,000
                                                   # WebSocket clients, Faye then the engine
    python bench/idle.py --transport long-polling  # row 2
    python bench/idle.py --workers 14 --procs 14 --clients 250000 --ramp-rate 2000 \\
        --timeout 30000 --channels 100 --fanout-fraction 0.01   # rows 6-7 (REPORT.md,
                                                   # "Idle clients over several workers")
    python bench/idle.py --hold 25 --scrapes 200   # README Metrics: a scrape's cost
    python bench/idle.py --compare-tls             # docs/benchmarks.md: TLS against plain

Any option of the scenario (`--help`) overrides the figure's; `--peer none`
drops Faye, and so does an option a Faye run cannot take (below).
"""

import sys

from engine.load import idle, recipe

FIGURE = {"--clients": "19000", "--transport": "websocket", "--peer": "faye"}
WITHOUT_PEER = ("--url", "--server-cmd", "--workers", "--tls", "--compare-tls", "--scrapes")

if __name__ == "__main__":
    sys.exit(recipe.run(idle.main, FIGURE, WITHOUT_PEER))
