"""The load tool: ``python -m engine load URL`` drives any Bayeux server.

Data flow: the command line (``cli``) runs a scenario (``idle``, ``fanout``,
``churn``, ``rate``; ``hostile`` and ``bound`` run as modules) which starts
load-generator processes (``client``: the one Bayeux client, many sessions
per process over long-polling or WebSocket, frames from ``wsframes``, receive
stamps from ``stamped``), a publisher process (``publisher``), for
``hostile`` the attackers (``attacks``) and for ``bound`` the lean connect
cycler (``cycler``) against a bare server (``bare_server``). It reads their
JSON stats lines (latencies as HdrHistograms, ``histogram``), shows them
live (``live``), reads the server's ``/proc`` figures (``procs``) and writes
one JSON record (``records``), which ``charts`` draws and ``report`` turns
into tables. ``recipe`` runs a scenario with a published figure's parameters
(the scripts in bench/).
"""
