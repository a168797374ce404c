"""One coarse timer structure per process (no timer per session or request).

Held connects and session expiry are not `call_later` handles per session:
entries go into slots of `resolution` seconds, and one periodic tick takes
every slot whose time has passed.  Entries are never removed early; an entry
that no longer applies (its connect was answered, its session was touched
again) is recognised as stale by the caller when its slot comes due.

The wheel is compiled with the sessions it mostly holds (src_pyx/protocol/_sessions.pyx).
"""

from engine.protocol._sessions import TimerWheel

__all__ = ["TimerWheel"]
