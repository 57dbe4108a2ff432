"""The HTTP access log, with every credential in a request line redacted.

Tokens, lesson codes and replay-link signatures travel in query strings and paths
(calendar apps can only fetch a URL); none of them may reach a log file.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

from aiohttp.abc import AbstractAccessLogger
from aiohttp.web import BaseRequest, StreamResponse

log = logging.getLogger("tongke.access")

_SECRET_QUERY = re.compile(r"(?i)([?&](?:token|code|access_token|sig|feed)=)[^&#\s]*")
# /replay-files/{expires}/{signature}/...
_SIGNED_PATH = re.compile(r"^(/replay-files/\d+/)[^/]+")
_JWT = re.compile(r"eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]+")


def redact(target: str) -> str:
    """A request target (path and query) safe to write to a log."""
    target = _SECRET_QUERY.sub(r"\1[redacted]", target)
    target = _SIGNED_PATH.sub(r"\1[redacted]", target)
    return _JWT.sub("[redacted-jwt]", target)


class RedactingAccessLogger(AbstractAccessLogger):
    def log(self, request: BaseRequest, response: StreamResponse, time: float) -> None:
        self.logger.info(
            '%s "%s %s" %d %d %.1fms',
            request.remote,
            request.method,
            redact(request.path_qs),
            response.status,
            response.body_length,
            time * 1000,
        )


def open_access_log(path: Path) -> logging.Logger:
    """Send the access log to `path` (appending); it never goes to the console."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
    return log
