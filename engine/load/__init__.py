"""The load tool: ``python -m engine load URL`` drives any Bayeux server.

Data flow: the command line (``cli``) runs a scenario (``idle``, ``fanout``,
``churn``, ``rate``, ``hostile``) which starts load-generator processes
(``client``: many Bayeux clients over long-polling or WebSocket, frames from
``wsframes``, receive stamps from ``stamped``), a publisher process
(``publisher``) and for ``hostile`` the attackers (``attacks``); it reads
their JSON stats lines, the server's ``/proc`` figures (``common``), and
writes one JSON record, which ``report`` turns into tables and charts.
"""
