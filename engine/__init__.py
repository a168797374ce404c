"""A CometD-compatible Bayeux server: compiled hot paths, uvloop, Redis scale-out."""

from engine.app import LocalSession
from engine.extensions import Extension, TimesyncExtension
from engine.options import ServerOptions
from engine.policy import SecurityPolicy
from engine.server import BayeuxServer
from engine.session import Session

__all__ = [
    "BayeuxServer",
    "Extension",
    "LocalSession",
    "SecurityPolicy",
    "ServerOptions",
    "Session",
    "TimesyncExtension",
]
__version__ = "0.1.0"
