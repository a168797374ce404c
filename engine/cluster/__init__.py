"""Past one process: Redis pub/sub, request forwarding, cluster status.

Receives local publishes and sends them once to Redis (`redis_broker`: the
connection, the bounded outbox, sequences and duplicates), delivering what
other nodes publish through the local fan-out it inherits from
`engine.delivery.broker.LocalBroker`; forwards an HTTP request for a
session another node owns to that node and relays its answer
(`forwarding`); publishes each node's summary (`status`).
"""
