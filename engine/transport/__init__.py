"""Transports: bytes from clients in, bytes to clients out.

Receives TCP connections; hands each request's batch of Bayeux messages to
the protocol core through an `Exchange`, and writes what the core answers.
HTTP/1.1 on httptools (`http`, compiled `_http`: long-polling,
callback-polling, the shared batch decoder, every HTTP response), the
WebSocket upgrade and frames (`websocket`, compiled codec `_wsframe`), the
connections' timeouts on one wheel
(`deadlines`), and the context the server gives them (`endpoint`).
"""
