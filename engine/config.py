"""Where the options come from: a TOML file, the environment, the command line.

Each layer overrides the one before (the way uvicorn and Centrifugo do it):

    ServerOptions defaults  (or the --app's own options)
      < the config file     (--config FILE, or ENGINE_CONFIG=FILE)
      < the environment     (ENGINE_<OPTION>, e.g. ENGINE_MAX_QUEUE=500)
      < the command line    (--max-queue 500: only the flags actually given)

Every `ServerOptions` field is available in all three, under its own name
(`max_queue` in the file, `ENGINE_MAX_QUEUE`, `--max-queue`).  A secret
(`admin_token`, `broker`, whose URL may hold a Redis password) can also be
read from a file: `admin_token_file = "/run/secrets/token"` in the config
file, `ENGINE_ADMIN_TOKEN_FILE`, or `--admin-token-file`, so that no secret
needs to be on a command line that `ps` shows.

Bad configuration is an error that names the key and where it came from:
an unknown key (with the closest known one), a value of the wrong type, a
file that does not exist or is not TOML.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from engine.options import ServerOptions

__all__ = [
    "ENV_PREFIX",
    "ConfigError",
    "SECRETS",
    "from_env",
    "from_file",
    "mask_password",
    "masked",
    "read_secret_files",
    "to_toml",
]

ENV_PREFIX = "ENGINE_"
CONFIG_ENV = ENV_PREFIX + "CONFIG"
# Options that may be read from a file (`<name>_file`) and are masked when shown.
SECRETS: tuple[str, ...] = ("admin_token", "broker", "api_key", "jwt_secret", "jwt_public_key")

_FIELDS = {f.name: f for f in dataclasses.fields(ServerOptions)}
_TYPES = {name: str(f.type) for name, f in _FIELDS.items()}
# The project's variables that are not options: the supervisor's hand-over to
# its workers, the build's and the tests' switches, `engine publish`'s URL.
_NOT_OPTIONS = tuple(
    ENV_PREFIX + p for p in ("WORKER_", "TEST_", "CYTHON_", "INTEROP_", "CHROMIUM", "API_URL")
)
_KINDS = {
    "bool": "true or false",
    "int": "an integer",
    "float": "a number",
    "str": "a string",
}
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


class ConfigError(ValueError):
    """A configuration value that cannot be used; the message names the key."""


def _unknown(key: str, where: str) -> ConfigError:
    known = [*_FIELDS, *(s + "_file" for s in SECRETS)]
    close = difflib.get_close_matches(key, known, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return ConfigError(f"{where}: unknown option {key!r}{hint}")


def _typed(key: str, value: Any, where: str) -> Any:
    """`value` as the option's type; TOML values must already be of it."""
    kind = _TYPES[key]
    ok = {
        "bool": isinstance(value, bool),
        "int": isinstance(value, int) and not isinstance(value, bool),
        "float": isinstance(value, int | float) and not isinstance(value, bool),
        "str": isinstance(value, str),
    }[kind]
    if not ok:
        shown = type(value).__name__ if key in SECRETS else repr(value)  # (a secret's value: never)
        raise ConfigError(f"{where}: {key} must be {_KINDS[kind]}, not {shown}")
    return float(value) if kind == "float" else value


def _parsed(key: str, text: str, where: str) -> Any:
    """An environment string as the option's type."""
    kind = _TYPES[key]
    try:
        if kind == "bool":
            low = text.strip().lower()
            if low in _TRUE:
                return True
            if low in _FALSE:
                return False
            raise ValueError
        if kind == "int":
            return int(text)
        if kind == "float":
            return float(text)
    except ValueError:
        spelled = " (1/0, yes/no, on/off)" if kind == "bool" else ""
        raise ConfigError(f"{where}: {key} must be {_KINDS[kind]}{spelled}, not {text!r}") from None
    return text


def _secret_from(key: str, path: str, where: str) -> str:
    try:
        return Path(path).read_text().strip()
    except OSError as exc:
        raise ConfigError(f"{where}: {key}_file: cannot read {path!r}: {exc.strerror}") from None


def from_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The options a TOML file sets (flat: `max_queue = 500`)."""
    where = f"config file {os.fspath(path)}"
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"{where}: no such file") from None
    except OSError as exc:
        raise ConfigError(f"{where}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{where}: not valid TOML: {exc}") from None
    values: dict[str, Any] = {}
    for key, value in data.items():
        if key.endswith("_file") and key[: -len("_file")] in SECRETS:
            name = key[: -len("_file")]
            if not isinstance(value, str):
                raise ConfigError(f"{where}: {key} must be a string (a path), not {value!r}")
            values[name] = _secret_from(name, value, where)
        elif key in _FIELDS:
            values[key] = _typed(key, value, where)
        else:
            raise _unknown(key, where)
    return values


def from_env(environ: Mapping[str, str], unknown: list[str] | None = None) -> dict[str, Any]:
    """The options `ENGINE_<OPTION>` variables set (and `ENGINE_<SECRET>_FILE`);
    a variable with the prefix that names no option goes to `unknown`."""
    values: dict[str, Any] = {}
    for var, text in environ.items():
        if not var.startswith(ENV_PREFIX) or var == CONFIG_ENV or var.startswith(_NOT_OPTIONS):
            continue
        key = var[len(ENV_PREFIX) :].lower()
        where = f"environment variable {var}"
        if key.endswith("_file") and key[: -len("_file")] in SECRETS:
            name = key[: -len("_file")]
            values[name] = _secret_from(name, text, where)
        elif key in _FIELDS:
            values[key] = _parsed(key, text, where)
        elif unknown is not None:
            # Not an error: an unrelated variable may share the prefix.
            unknown.append(str(_unknown(key, where)))
    return values


def read_secret_files(given: Mapping[str, Any]) -> dict[str, Any]:
    """Command-line values, with `<secret>_file` paths replaced by the secret."""
    values = dict(given)
    for name in SECRETS:
        path = values.pop(name + "_file", None)
        if path is not None:
            flag = "--" + name.replace("_", "-") + "-file"
            values[name] = _secret_from(name, path, f"command line {flag}")
    return values


def masked(options: ServerOptions) -> dict[str, Any]:
    """Every option's value, secrets masked (`python -m engine config`)."""
    values = dataclasses.asdict(options)
    for name in SECRETS:
        if name not in ("broker", "jwt_public_key") and values[name]:  # (a public key is public)
            values[name] = "***"
    values["broker"] = mask_password(values["broker"])
    return values


_PASSWORD = re.compile(r"(//[^/@:\s]*:)[^@\s]*@")


def mask_password(text: str) -> str:
    """`text` with the password of any URL in it (`//user:password@`) as `***`:
    a URL keeps its host, for the logs and `python -m engine config`."""
    return _PASSWORD.sub(r"\1***@", text)


def to_toml(values: Mapping[str, Any]) -> str:
    """`values` as the TOML a config file would hold (it loads back as is)."""
    lines = []
    for key, value in values.items():
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, int | float):
            text = repr(value)
        else:
            text = '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'
        lines.append(f"{key} = {text}")
    return "\n".join(lines) + "\n"
