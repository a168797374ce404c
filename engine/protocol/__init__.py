"""The Bayeux protocol core: meta channels, sessions, held connects.

Receives message batches from the transports (an `Exchange` per request);
runs handshake, connect, subscribe, unsubscribe, disconnect and publish, with
the application's policy, extensions and listeners (`engine.api`); hands
publishes to the broker (`engine.delivery`) and queued events back to the
transports (an `EventSink` per WebSocket, or the reply of a held connect).
`core` (with its compiled half `_sessions`: sessions, the timer wheel,
delivery), `session` (the interfaces), `errors` (CometD's error strings),
`limits` (what one connection or address may do), `message`.
"""
