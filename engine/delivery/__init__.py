"""From a publish to the sessions' queues.

Receives a channel and the message encoded once (`_batch`, compiled: the
one JSON encoder and the splicing of encoded messages into HTTP, JSONP and
WebSocket responses); finds the subscribers (`engine.routing`) and hands
each session the same bytes (`broker.LocalBroker`).  In a cluster the
Redis broker (`engine.cluster`), a `LocalBroker` that also talks to Redis,
stands in its place.
"""
