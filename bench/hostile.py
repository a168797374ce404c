#!/usr/bin/env python3
"""Recipe: the `hostile` scenario of the load tool (engine/load/hostile.py), its
records in bench/results/; `--help` lists its options."""

import sys

from engine.load.hostile import main

if __name__ == "__main__":
    sys.exit(main())
