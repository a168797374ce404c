#!/usr/bin/env python3
"""Recipe: the `fanout` scenario of the load tool (engine/load/fanout.py), its
records in bench/results/; `--help` lists its options."""

import sys

from engine.load.fanout import main

if __name__ == "__main__":
    sys.exit(main())
