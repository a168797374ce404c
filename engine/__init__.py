"""A CometD-compatible Bayeux server: compiled hot paths, uvloop, Redis scale-out.

Everything an application needs is exported here; the submodules are the
implementation.
"""

from importlib.metadata import PackageNotFoundError, version

from engine.app import LocalSession
from engine.extensions import Extension, TimesyncExtension
from engine.options import ServerOptions
from engine.policy import GRANT, IGNORE, Deny, SecurityPolicy, deny
from engine.server import BayeuxServer
from engine.session import Session

__all__ = [
    "GRANT",
    "IGNORE",
    "BayeuxServer",
    "Deny",
    "Extension",
    "LocalSession",
    "SecurityPolicy",
    "ServerOptions",
    "Session",
    "TimesyncExtension",
    "deny",
]

try:  # one version: the package metadata's (pyproject.toml)
    __version__ = version("engine")
except PackageNotFoundError:  # (a source tree that was never installed)
    __version__ = "0.0.0+unknown"
