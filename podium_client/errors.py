"""The error hierarchy of the Podium client.

It mirrors the wire: every error carries the HTTP status, the contract's error `code`, the `uid` the
error is about (when Podium names one), the `X-Request-Id` of the response and the parsed body. Callers
branch on the class, never on the message.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


class PodiumError(Exception):
    """Base class of every error the client raises."""

    def __init__(
        self,
        message: str,
        http_status: int | None = None,
        code: str | None = None,
        uid: str | None = None,
        request_id: str | None = None,
        body: Any = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.http_status = http_status
        self.code = code
        self.uid = uid
        self.request_id = request_id
        self.body = body

    def __str__(self) -> str:
        parts = [self.message]
        if self.http_status is not None:
            parts.append(f"http_status={self.http_status}")
        if self.code:
            parts.append(f"code={self.code}")
        if self.uid:
            parts.append(f"uid={self.uid}")
        if self.request_id:
            parts.append(f"request_id={self.request_id}")
        return " ".join(parts) if len(parts) == 1 else f"{parts[0]} ({', '.join(parts[1:])})"

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(message={self.message!r}, http_status={self.http_status!r}, "
            f"code={self.code!r}, uid={self.uid!r}, request_id={self.request_id!r})"
        )


class AuthenticationError(PodiumError):
    """401 unauthenticated: the token is missing, wrong, or expired and could not be refreshed."""


class PermissionDeniedError(AuthenticationError):
    """403 unauthorized: the token is valid but lacks the scope for this call."""


class RateLimitError(PodiumError):
    """rate_limit (429), still failing after the retries; `retry_after` is the server's hint in seconds."""

    def __init__(self, message: str, retry_after: float | None = None, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.retry_after = retry_after


class NotFoundError(PodiumError):
    """404 resource_not_found: no contact (location, tag, ...) answers to that identifier."""


class InvalidRequestError(PodiumError):
    """400 bad_request / invalid_request_values: Podium refused the body or the parameters."""


class InvalidCursorError(InvalidRequestError):
    """400 invalid_cursor: a listing's cursor went stale; restart that listing from a checkpoint."""


class InvalidDuplicateError(InvalidRequestError):
    """400 invalid_duplicate_uid (capability merge): a duplicate is gone, hidden, or the primary.

    `uid` names the offending duplicate when the server says which one it was.
    """


class ConflictError(PodiumError):
    """409 merge_in_progress (capability merge): another merge touching these contacts is in flight."""


class UnprocessableError(PodiumError):
    """422 cross_location_merge_blocked (capability merge): the tenant forbids merging across locations."""


class ServerError(PodiumError):
    """5xx that persisted through the retries."""


class APIConnectionError(PodiumError):
    """The server could not be reached, or the connection failed or timed out, through the retries."""


class MalformedResponse(PodiumError):
    """The server answered something that is not the contract's shape (not JSON, missing fields, wrong types)."""


class WebhookSignatureError(PodiumError):
    """A webhook delivery's `podium-signature`/`podium-timestamp` is missing, stale, or does not match."""


class CapabilityMissing(PodiumError):
    """The call needs a Part 2 capability (merge, restore, soft-delete) this client was not told of."""


class UnaddressableContact(PodiumError):
    """No unambiguous identifier reaches this contact through the published API.

    A contact is addressed by a conversation uid, or by an email or E.164 phone that no other contact
    holds; one with none of those cannot be read, changed or deleted by identifier without risking
    acting on another contact.
    """


class MergeOutcomeUnknown(PodiumError):
    """A merge request may have reached Podium but its answer was lost.

    Raised when the connection dropped or timed out after the request was sent, or when the server
    answered a 5xx that does not promise that nothing was done. The merge may or may not have been
    applied; retrying blindly could merge twice or act on a changed cluster, so the caller must
    reconcile by reading the primary and the duplicates back.
    """

    def __init__(
        self,
        primary_uid: str,
        duplicate_uids: Sequence[str],
        cause: str,
        **kwargs: Any,
    ) -> None:
        message = (
            f"merge of {list(duplicate_uids)} into {primary_uid}: outcome unknown ({cause}); "
            "reconcile by reading the contacts before doing anything else"
        )
        kwargs.setdefault("uid", primary_uid)
        super().__init__(message, **kwargs)
        self.primary_uid = primary_uid
        self.duplicate_uids = tuple(duplicate_uids)
        self.cause = cause


_BY_CODE: dict[str, type[PodiumError]] = {
    # Podium's published codes.
    "bad_request": InvalidRequestError,
    "invalid_request_values": InvalidRequestError,
    "invalid_cursor": InvalidCursorError,
    "unauthenticated": AuthenticationError,
    "unauthorized": PermissionDeniedError,
    "resource_not_found": NotFoundError,
    "route_not_found": NotFoundError,
    "rate_limit": RateLimitError,
    "internal_server_error": ServerError,
    # Codes of the Part 2 capabilities (merge).
    "invalid_duplicate_uid": InvalidDuplicateError,
    "merge_in_progress": ConflictError,
    "cross_location_merge_blocked": UnprocessableError,
}

_BY_STATUS: dict[int, type[PodiumError]] = {
    400: InvalidRequestError,
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    409: ConflictError,
    422: UnprocessableError,
    429: RateLimitError,
}
_STATUS_CLASSES = frozenset(_BY_STATUS.values())


def error_class_for(http_status: int, code: str | None) -> type[PodiumError]:
    """The error class for an HTTP status and Podium error code.

    The status decides the family; the code refines it only within that family, so a server that
    pairs an odd code with a status still yields an error a caller handles by status. The one
    exception is ``rate_limit``: whatever status carries it, the call was refused for pace, not for
    what it asked, so it is retryable like a 429.
    """
    if code == "rate_limit":
        return RateLimitError
    if http_status >= 500:
        return ServerError
    by_status = _BY_STATUS.get(http_status, PodiumError)
    by_code = _BY_CODE.get(code or "")
    if by_code is None or not issubclass(by_code, by_status):
        return by_status
    if http_status in _BY_STATUS and by_code is not by_status and by_code in _STATUS_CLASSES:
        # A code naming another status's family (a 401 saying "unauthorized") does not override the
        # status: the token was refused, which is not a missing scope.
        return by_status
    return by_code
