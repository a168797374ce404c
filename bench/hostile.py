#!/usr/bin/env python3
"""Hostile clients: five attacks at once (endless headers, non-readers,
handshake and publish floods, slowloris) beside 1,000 ordinary clients and
two canaries; what the ordinary clients notice: p99 latency, drops, lost
messages (the `hostile` scenario, engine/load/hostile.py).

    python bench/hostile.py            # README Performance, row 9: 60 s, every attack
    python bench/hostile.py --server-args "--max-connection-publish-rate 200"
                                       # docs/benchmarks.md: with a per-connection rate
    python bench/hostile.py --duration 10 --scale 0.1   # a short look

Every option of the scenario (`--help`) is taken as it is.
"""

import sys

from engine.load import hostile, recipe

if __name__ == "__main__":
    sys.exit(recipe.run(hostile.main, {}))
