#!/usr/bin/env python3
"""The engine's long-polling `/meta/connect` cycles per second against the
bound: a bare uvloop + httptools server answering a fixed reply (the `bound`
scenario, engine/load/bound.py, with its lean client engine/load/cycler.py
and the bare server engine/load/bare_server.py).

    python bench/bound.py                   # README Performance, "connect cycles per
                                            # second": the scenario's defaults
    python bench/bound.py --profile out.svg # with a py-spy flame graph of the engine

Every option of the scenario (`--help`) is taken as it is.
"""

import sys

from engine.load import bound, recipe

if __name__ == "__main__":
    sys.exit(recipe.run(bound.main, {}))
