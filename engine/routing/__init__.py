"""Channel names and the subscription trie.

Receives a channel name (from a publish) and answers which subscriptions
match it (`_channels`, compiled; its plain-Python twin is a test oracle in
tests/oracles/): exact names, `/a/*` and `/a/**`, in time proportional to
the name's depth.
"""
