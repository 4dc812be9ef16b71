"""A refused request is one line in the log, not a traceback; a 500 keeps its traceback."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator
from contextlib import contextmanager

from django.http import HttpRequest, HttpResponse
from django.test import override_settings
from django.urls import path

from dedup.logfilters import ClientErrorsOnOneLine
from tests.dashboard_base import DashboardTestCase


def _boom(request: HttpRequest) -> HttpResponse:
    raise RuntimeError("a real bug")


urlpatterns = [path("boom/", _boom)]


@contextmanager
def console_output() -> Iterator[io.StringIO]:
    """What the configured console handler writes, captured (the handler's own filters and format apply)."""
    handlers = [h for h in logging.getLogger().handlers if h.name == "console"]
    assert handlers, "settings.LOGGING gives the root logger a console handler"
    handler = handlers[0]
    assert isinstance(handler, logging.StreamHandler)
    buffer = io.StringIO()
    previous = handler.setStream(buffer)
    try:
        yield buffer
    finally:
        handler.setStream(previous)


class LogLinesTestCase(DashboardTestCase):
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
