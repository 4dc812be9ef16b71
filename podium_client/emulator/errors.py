"""The errors the emulator answers, in Podium's top-level envelope `{"code", "message", "moreInfo"}`."""

from __future__ import annotations

from typing import Any

MORE_INFO = "https://docs.podium.com/docs/errors"


class EmulatorError(Exception):
    """An error answered as `status` with Podium's envelope; `code` is one of Podium's string codes."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message

    def body(self) -> dict[str, Any]:
        """The envelope Podium answers (no wrapper object)."""
        return error_body(self.code, self.message)


def error_body(code: str, message: str | None) -> dict[str, Any]:
    """`{"code", "message", "moreInfo"}` for `code`."""
    return {"code": code, "message": message, "moreInfo": f"{MORE_INFO}#{code}"}


def invalid_values(field: str, message: str) -> EmulatorError:
    """400 invalid_request_values naming the offending field."""
    return EmulatorError(400, "invalid_request_values", f"{field}: {message}")


def bad_request(message: str) -> EmulatorError:
    """400 bad_request (a body that is not JSON, a request that cannot be read)."""
    return EmulatorError(400, "bad_request", message)


def invalid_cursor(message: str) -> EmulatorError:
    """400 invalid_cursor: restart the listing."""
    return EmulatorError(400, "invalid_cursor", message)


def not_found(what: str) -> EmulatorError:
    """404 resource_not_found."""
    return EmulatorError(404, "resource_not_found", f"{what} not found")
