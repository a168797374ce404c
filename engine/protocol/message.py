"""A Bayeux message as the engine handles it: one decoded JSON object.

Messages arrive as JSON arrays of such objects (`channel`, `clientId`, `id`,
`data`, `ext`, `advice`, ...) and leave the same way; the core reads them as
dicts and checks each field's type before use, since clients send anything.
"""

from __future__ import annotations

from typing import Any

__all__ = ["Message"]

Message = dict[str, Any]
