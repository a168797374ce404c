"""A CometD-compatible Bayeux server: compiled hot paths, uvloop, Redis scale-out.

Everything an application needs is exported here; the submodules are the
implementation. The exports are imported on first use (PEP 562), so that the
processes that use only a part of the package (the load tool's generators,
`engine check`) do not load the whole server: about 30 MB per process.
"""

from __future__ import annotations

import importlib
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from engine.api.app import LocalSession
    from engine.api.context import HttpContext, current_context
    from engine.api.extensions import Extension, TimesyncExtension
    from engine.api.policy import GRANT, IGNORE, Deny, SecurityPolicy, deny
    from engine.api.tokens import JwtPolicy
    from engine.options import ServerOptions
    from engine.protocol.session import Session
    from engine.server import BayeuxServer

#: Each export and the module it comes from.
_EXPORTS = {
    "GRANT": "engine.api.policy",
    "IGNORE": "engine.api.policy",
    "BayeuxServer": "engine.server",
    "Deny": "engine.api.policy",
    "Extension": "engine.api.extensions",
    "HttpContext": "engine.api.context",
    "JwtPolicy": "engine.api.tokens",
    "LocalSession": "engine.api.app",
    "SecurityPolicy": "engine.api.policy",
    "ServerOptions": "engine.options",
    "Session": "engine.protocol.session",
    "TimesyncExtension": "engine.api.extensions",
    "current_context": "engine.api.context",
    "deny": "engine.api.policy",
}

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


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'engine' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # the next lookup is a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])


try:  # one version: the package metadata's (pyproject.toml)
    __version__ = version("bayeux-engine")
except PackageNotFoundError:  # (a source tree that was never installed)
    __version__ = "0.0.0+unknown"
