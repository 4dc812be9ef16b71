"""A refused request is one line in the log, not a traceback; a 500 keeps its traceback."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from django.http import HttpRequest, HttpResponse
from django.test import override_settings
from django.urls import path

from dedup.logfilters import ClientErrorsOnOneLine
from tests.dashboard_base import DashboardTestCase


def _boom(request: HttpRequest) -> HttpResponse:
    raise RuntimeError("a real bug")


urlpatterns = [path("boom/", _boom)]


def _stream_handlers(logger_name: str) -> list[logging.StreamHandler[Any]]:
    """Every plain stream handler a record of ``logger_name`` reaches (pytest's capture handlers aside)."""
    found: list[logging.StreamHandler[Any]] = []
    logger: logging.Logger | None = logging.getLogger(logger_name)
    while logger is not None:
        found += [h for h in logger.handlers if type(h) is logging.StreamHandler]
        if not logger.propagate:
            break
        logger = logger.parent
    return found


@contextmanager
def console_output(logger_name: str = "django.request") -> Iterator[io.StringIO]:
    """What the configured stream handlers write for ``logger_name``, captured (their filters and format apply)."""
    handlers = _stream_handlers(logger_name)
    assert any(h.name == "console" for h in handlers), "settings.LOGGING gives the root logger a console handler"
    buffer = io.StringIO()
    previous = [h.setStream(buffer) for h in handlers]
    try:
        yield buffer
    finally:
        for handler, stream in zip(handlers, previous, strict=True):
            handler.setStream(stream)


class LogLinesTestCase(DashboardTestCase):
    @override_settings(DEBUG=True)  # as under `make run`, where Django's own console handler is active too
    def test_a_403_is_one_line_naming_the_path_and_the_reason(self) -> None:
        self.login(self.sydney_manager)
        with console_output() as out:
            response = self.client.get("/audit/", {"format": "csv"})
        assert response.status_code == 403
        lines = [line for line in out.getvalue().splitlines() if line.strip()]
        forbidden = [line for line in lines if "Forbidden" in line]
        assert len(forbidden) == 1, out.getvalue()
        assert "/audit/" in forbidden[0] and "export audit" in forbidden[0]
        assert "Traceback" not in out.getvalue()

    def test_the_filter_is_on_the_console_handler(self) -> None:
        console = [h for h in logging.getLogger().handlers if h.name == "console"]
        assert any(isinstance(f, ClientErrorsOnOneLine) for h in console for f in h.filters)

    @override_settings(ROOT_URLCONF="tests.test_log_lines")
    def test_a_500_keeps_its_traceback(self) -> None:
        self.client.raise_request_exception = False
        with console_output() as out:
            response = self.client.get("/boom/")
        assert response.status_code == 500
        assert "Traceback" in out.getvalue() and "a real bug" in out.getvalue()
