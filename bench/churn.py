#!/usr/bin/env python3
"""Recipe: the `churn` scenario of the load tool (engine/load/churn.py), its
records in bench/results/; `--help` lists its options."""

import sys

from engine.load.churn import main

if __name__ == "__main__":
    sys.exit(main())
