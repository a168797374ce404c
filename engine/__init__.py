"""A CometD-compatible Bayeux server: compiled hot paths, uvloop, Redis scale-out."""

from engine.options import ServerOptions
from engine.policy import SecurityPolicy
from engine.server import BayeuxServer

__all__ = ["BayeuxServer", "SecurityPolicy", "ServerOptions"]
__version__ = "0.1.0"
