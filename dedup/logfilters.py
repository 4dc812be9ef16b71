"""Logging filters wired in ``settings.LOGGING``.

A 4xx is the client's doing (a refused permission, a bad request): the log gets one line saying what was
refused, never a traceback, which would make a routine refusal look like a crash and bury real ones.
"""

from __future__ import annotations

import logging


class ClientErrorsOnOneLine(logging.Filter):
    """Drop the traceback from records about a response below 500, keeping the exception's message."""

    def filter(self, record: logging.LogRecord) -> bool:
        status = getattr(record, "status_code", None)
        if not record.exc_info or not isinstance(status, int) or status >= 500:
            return True
        exc = record.exc_info[1]
        message = record.getMessage()
        detail = " ".join(str(exc).split()) if exc is not None else ""
        if detail and detail not in message:
            message = f"{message} ({detail})"
        record.msg, record.args = message, ()
        record.exc_info, record.exc_text = None, None
        return True
