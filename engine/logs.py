"""The process's logging: text or JSON lines that name their node and worker,
the optional access log, or the operator's own `--log-config` file.

Every record gets two attributes, `node` (the node id) and `worker` (which
process of a `--workers` group wrote it), from a LogRecord factory: so they
are there for any handler and formatter, a `--log-config` file's included
(`%(node)s`, `%(worker)s`).  `worker` is always a string, so that a log
store keeps one type per field: "0" for a server alone, "1".."N" for the
workers of `--workers N`, "supervisor" for their supervisor.

    configure_logging(options, worker="0")   # engine.cli, before serving
    set_node(node_id)                        # BayeuxServer.start, once decided
"""

from __future__ import annotations

import configparser
import json
import logging
import logging.config
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pythonjsonlogger.orjson import OrjsonFormatter

from engine.options import ServerOptions

__all__ = [
    "ACCESS_LOGGER",
    "JsonFormatter",
    "LogConfigError",
    "TEXT_FORMAT",
    "configure_logging",
    "log_access",
    "set_node",
]

TEXT_FORMAT = "%(asctime)s %(levelname)s node=%(node)s worker=%(worker)s %(name)s: %(message)s"
ACCESS_LOGGER = "engine.access"

# Where every record reads its node and worker from (see the module docstring).
_identity = {"node": "-", "worker": "0"}
_base_factory = logging.getLogRecordFactory()

access_log = logging.getLogger(ACCESS_LOGGER)


class LogConfigError(ValueError):
    """A --log-config file that cannot be applied; the message says why."""


def _record(*args: Any, **kwargs: Any) -> logging.LogRecord:
    record = _base_factory(*args, **kwargs)
    record.node = _identity["node"]
    record.worker = _identity["worker"]
    return record


def set_node(node_id: str) -> None:
    """The node id the lines logged from now on carry."""
    _identity["node"] = node_id or "-"


class JsonFormatter(OrjsonFormatter):
    """One JSON object per line: time (ISO 8601, UTC), level, logger, message,
    node, worker, then the record's extra fields (the access log's) and
    exc_info (the traceback, as one string) when there is one.

    Usable from a --log-config file: `{"()": "engine.logs.JsonFormatter"}`.
    """

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("fmt", "{levelname}{name}{message}{node}{worker}")
        kwargs.setdefault("style", "{")
        kwargs.setdefault("rename_fields", {"levelname": "level", "name": "logger"})
        super().__init__(**kwargs)

    def add_fields(
        self, log_data: dict[str, Any], record: logging.LogRecord, message_dict: dict[str, Any]
    ) -> None:
        log_data["time"] = datetime.fromtimestamp(record.created, tz=UTC)  # first, for the eye
        super().add_fields(log_data, record, message_dict)


def configure_logging(options: ServerOptions, worker: str = "0") -> None:
    """Set up this process's logging from the options (log_level, log_format,
    access_log, log_config).  Raises LogConfigError for a log_config file
    that cannot be read or applied."""
    _identity["worker"] = worker
    set_node(options.node_id)
    logging.setLogRecordFactory(_record)
    engine = logging.getLogger("engine")
    if options.log_config:
        engine.setLevel(logging.NOTSET)  # (so that the file's own level shows below)
        _apply_file(options.log_config)
        # As uvicorn's --log-level: the engine loggers' level, unless the file sets it.
        if engine.level == logging.NOTSET:
            engine.setLevel(options.log_level.upper())
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(
            JsonFormatter() if options.log_format == "json" else logging.Formatter(TEXT_FORMAT)
        )
        logging.basicConfig(level=options.log_level.upper(), handlers=[handler], force=True)
    access = logging.getLogger(ACCESS_LOGGER)
    if options.access_log and access.level == logging.NOTSET:
        access.setLevel(logging.INFO)  # asked for: shown whatever log_level says


def _apply_file(path: str) -> None:
    """A dictConfig file (JSON, or YAML with PyYAML), or a fileConfig .ini file."""

    def error(reason: str) -> LogConfigError:
        return LogConfigError(f"--log-config {path}: {reason}")

    suffix = Path(path).suffix.lower()
    try:
        if suffix in (".ini", ".cfg", ".conf"):
            if not Path(path).is_file():  # (fileConfig would take it for an empty file)
                raise error("no such file")
            logging.config.fileConfig(path, disable_existing_loggers=False)
            return
        text = Path(path).read_text()
    except FileNotFoundError:
        raise error("no such file") from None
    except OSError as exc:
        raise error(exc.strerror or str(exc)) from None
    except (configparser.Error, KeyError, ValueError, TypeError, RuntimeError) as exc:
        raise error(f"not a valid logging.config.fileConfig file: {exc!r}") from None
    if suffix in (".yaml", ".yml"):
        try:
            import yaml  # type: ignore[import-untyped]
        except ImportError:
            raise error("a YAML file needs PyYAML (pip install pyyaml); or give JSON") from None
        try:
            config = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise error(f"not valid YAML: {exc}") from None
    else:
        try:
            config = json.loads(text)
        except ValueError as exc:
            raise error(f"not valid JSON: {exc}") from None
    if not isinstance(config, dict):
        raise error("not a logging.config.dictConfig dictionary (a mapping)")
    # The engine's loggers exist already (made at import): unless the file says
    # otherwise, they are kept, not silenced as dictConfig would by default.
    config.setdefault("disable_existing_loggers", False)
    try:
        logging.config.dictConfig(config)
    except (ValueError, TypeError, AttributeError, ImportError, KeyError) as exc:
        reason = str(exc)
        if exc.__cause__ is not None:  # (dictConfig's "Unable to configure handler 'x'")
            reason += f": {exc.__cause__}"
        raise error(f"not a valid logging.config.dictConfig dictionary: {reason}") from None


def log_access(
    remote: str | None, method: str, path: str, status: int, size: int, duration_ms: float
) -> None:
    """One access-log line (engine.transport: only with access_log on).  The path
    comes without its query string, which may carry tokens or JSONP callbacks."""
    remote = remote or "-"
    duration_ms = round(duration_ms, 1)
    access_log.info(
        '%s "%s %s" %d %d %.1fms',
        remote,
        method,
        path,
        status,
        size,
        duration_ms,
        extra={
            "remote": remote,
            "method": method,
            "path": path,
            "status": status,
            "bytes": size,
            "duration_ms": duration_ms,
        },
    )
