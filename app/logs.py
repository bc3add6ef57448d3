"""Log lines: text by default, or one JSON object a line (``FMPN_LOG_FORMAT=json``) for a log collector (Loki,
Elasticsearch, Cloud Logging), each line a request causes carrying that request's ``request_id``
(``X-Request-ID``), uvicorn's access lines included.

``uvicorn app.main:app`` has configured its loggers before it imports the app, so JSON mode swaps the formatter of
the handlers it set up (keeping its levels and ``--no-access-log``); ``fmpn serve`` hands uvicorn a JSON config.
"""

from __future__ import annotations

import copy
import json
import logging
from datetime import UTC, datetime
from typing import Any

from app.request_id import current_request_id

LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.access", "app")
TEXT_FORMAT = "%(levelname)s:     %(name)s: %(message)s"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        request_id = current_request_id()  # handlers format as the line is logged, in the request's context
        if request_id:
            entry["request_id"] = request_id
        if record.name == "uvicorn.access" and isinstance(record.args, tuple) and len(record.args) == 5:
            client, method, path, _version, status = record.args
            entry.update(client=client, method=method, path=path, status=status)
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure(log_format: str) -> None:
    """The service's loggers as they are now (uvicorn's, if it runs us), in ``log_format``."""
    app_logger = logging.getLogger("app")
    app_logger.setLevel(logging.INFO)
    if not app_logger.handlers and not logging.getLogger().handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter(TEXT_FORMAT))
        app_logger.addHandler(handler)
    if log_format != "json":
        return
    for name in LOGGERS:
        for handler in logging.getLogger(name).handlers:
            handler.setFormatter(JsonFormatter())


def uvicorn_config(log_format: str) -> dict[str, Any]:
    """``uvicorn.run(log_config=...)``: uvicorn's own config, with the JSON formatter in JSON mode."""
    from uvicorn.config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    if log_format == "json":
        config["formatters"] = {name: {"()": "app.logs.JsonFormatter"} for name in config["formatters"]}
        config["loggers"]["app"] = {"handlers": ["default"], "level": "INFO", "propagate": False}
    return config
