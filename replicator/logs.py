"""Log set-up: plain text for people, or one JSON object per line for log pipelines.

Records may carry the fields ``policy``, ``source``, ``destination``, ``repository``, ``tag``
and ``digest`` (pass them with ``extra=``); the JSON format emits them as keys. Messages never
contain credentials: drivers and configuration errors never include them.
"""

from __future__ import annotations

import json
import logging
import sys
import time

FIELDS = ("policy", "source", "destination", "repository", "tag", "digest")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        document = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
                    + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        document.update((name, getattr(record, name)) for name in FIELDS if hasattr(record, name))
        if record.exc_info:
            document["exception"] = self.formatException(record.exc_info)
        return json.dumps(document)


SDK_LOGGERS = ("botocore", "boto3", "s3transfer", "urllib3", "azure", "google", "apscheduler")
"""Cloud SDK loggers stay at WARNING even at --log-level debug: their debug output carries
request headers and signatures."""


def configure(level: str, log_format: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
    for name in SDK_LOGGERS:
        logging.getLogger(name).setLevel(max(logging.WARNING, logging.getLevelName(level.upper())))
