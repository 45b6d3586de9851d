"""Logging set-up: text or JSON lines, every record carrying its `request_id` when it has one."""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime

from reimagine.config import Settings

# uvicorn adds `color_message`, the same text with ANSI colour codes: never written to a log.
_STANDARD = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime", "color_message"}


class _JsonFormatter(logging.Formatter):
    def __init__(self, role: str) -> None:
        super().__init__()
        self._role = role

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "role": self._role,
            "msg": record.getMessage(),
        }
        entry.update({k: v for k, v in record.__dict__.items() if k not in _STANDARD})
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class _TextFormatter(logging.Formatter):
    def __init__(self, role: str) -> None:
        super().__init__(f"%(asctime)s %(levelname)s [{role}] %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        extras = {k: v for k, v in record.__dict__.items() if k not in _STANDARD}
        if extras:
            text += " " + " ".join(f"{k}={v}" for k, v in extras.items())
        return text


def configure_logging(settings: Settings, *, role: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_JsonFormatter(role) if settings.log_json else _TextFormatter(role))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.log_level.upper())
    # Alembic narrates every plugin it sets up at INFO on every start.
    logging.getLogger("alembic").setLevel(max(logging.WARNING, root.level))
    # huggingface_hub gives its logger a stderr handler of its own on import, and lets records propagate too:
    # every retry line came out twice, once unformatted. Importing it here first lets the root handler alone write.
    from huggingface_hub.utils import logging as hub_logging

    hub_logging.get_logger().handlers.clear()
