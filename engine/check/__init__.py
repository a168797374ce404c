"""`python -m engine check URL`: a black-box conformance suite for any Bayeux
server, over raw HTTP and raw WebSocket; `--client` turns it around into a
judging server that a client under test connects to.
"""
