"""A CometD-compatible Bayeux server: compiled hot paths, uvloop, Redis scale-out.

Everything an application needs is exported here; the submodules are the
implementation.
"""

from importlib.metadata import PackageNotFoundError, version

from engine.api.app import LocalSession
from engine.api.context import HttpContext, current_context
from engine.api.extensions import Extension, TimesyncExtension
from engine.api.policy import GRANT, IGNORE, Deny, SecurityPolicy, deny
from engine.api.tokens import JwtPolicy
from engine.options import ServerOptions
from engine.protocol.session import Session
from engine.server import BayeuxServer

__all__ = [
    "GRANT",
    "IGNORE",
    "BayeuxServer",
    "Deny",
    "Extension",
    "HttpContext",
    "JwtPolicy",
    "LocalSession",
    "SecurityPolicy",
    "ServerOptions",
    "Session",
    "TimesyncExtension",
    "current_context",
    "deny",
]

try:  # one version: the package metadata's (pyproject.toml)
    __version__ = version("bayeux-engine")
except PackageNotFoundError:  # (a source tree that was never installed)
    __version__ = "0.0.0+unknown"
