#!/usr/bin/env python3
"""Reconnect storms: 200 long-polling clients handshaking, subscribing,
connecting and disconnecting in a loop, two rounds of 10 s; handshakes per
second, errors, server CPU per handshake and whether memory returns after
each storm (the `churn` scenario, engine/load/churn.py; REPORT.md "Churn").

    python bench/churn.py                   # the REPORT.md row: the scenario's defaults
    python bench/churn.py --peer faye       # the same storm against Faye first

Every option of the scenario (`--help`) is taken as it is.
"""

import sys

from engine.load import churn, recipe

if __name__ == "__main__":
    sys.exit(recipe.run(churn.main, {}))
