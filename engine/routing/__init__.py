"""Channel names and the subscription trie.

Receives a channel name (from a publish) and answers which subscriptions
match it (`_channels`, compiled; `channels`, its plain-Python twin and test
oracle): exact names, `/a/*` and `/a/**`, in time proportional to the
name's depth.
"""
