"""Plain-Python twins of the compiled modules, kept as test oracles.

Each states its compiled module's contract in readable code; the tests feed
both the same inputs and compare the results (`bench/micro.py` times both).
They are not part of the installed package: the server only ever runs the
compiled modules.
"""
