"""What an application writes against, behind `engine.BayeuxServer`.

`app` (services, listeners, server-side publishes, local sessions),
`hooks` (where the core calls them), `extensions`, `policy` (the security
policy and channel authorizers).  The core calls into these; they call the
core only through the application object.
"""
