#!/usr/bin/env python3
"""Recipe: the `idle` scenario of the load tool (engine/load/idle.py), its
records in bench/results/; `--help` lists its options."""

import sys

from engine.load.idle import main

if __name__ == "__main__":
    sys.exit(main())
