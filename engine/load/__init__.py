"""`python -m engine load URL`: a load generator for any Bayeux server.

One client implementation (`engine.load.client`, long-polling and WebSocket),
one latency histogram (`engine.load.histogram`), scenarios built on them
(`engine.load.scenarios`), run over several generator processes when the
open-files limit asks for it, with a live display, JSON records and charts.
"""
