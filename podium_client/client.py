"""The Podium API client: typed calls, one retry policy, pacing and token refresh."""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import datetime
from types import TracebackType
from typing import Any
from urllib.parse import quote

import requests
import urllib3.exceptions
from requests.adapters import HTTPAdapter

from podium_client import types as wire
from podium_client.auth import OAuthCredentials, TokenManager, is_retryable_auth_failure
from podium_client.errors import (
    APIConnectionError,
    MalformedResponse,
    MergeOutcomeUnknown,
    PodiumError,
    RateLimitError,
    ServerError,
    error_class_for,
)
from podium_client.ratelimit import RateLimiter
from podium_client.types import Attribute, Channel, Contact, ContactPage, Location

logger = logging.getLogger("podium_client")

MAX_PAGE_SIZE = 100

# Statuses a merge may safely repeat: the contract answers them before anything is done. Any other
# 5xx could come from a proxy after the merge went through, so its outcome is unknown.
_MERGE_SAFE_STATUSES = frozenset({429, 503})

_PROGRAMMING_ERRORS = (
    requests.exceptions.InvalidURL,
    requests.exceptions.MissingSchema,
    requests.exceptions.InvalidSchema,
    requests.exceptions.InvalidHeader,
)


class _Retry(Exception):
    """Internal: a transient failure the retry loop may repeat."""

    def __init__(self, error: PodiumError, retry_after: float | None = None) -> None:
        super().__init__(error.message)
        self.error = error
        self.retry_after = retry_after


class _TokenRefreshed(Exception):
    """Internal: the access token was refreshed after a 401 token_expired; send the call again."""


def _caused_by(error: PodiumError, cause: BaseException) -> PodiumError:
    # The error may be raised later, after the retries, outside this except block: keep the cause.
    error.__cause__ = cause
    return error


def _nothing_was_sent(exc: requests.RequestException) -> bool:
    """True when the request failed before any byte reached the server (safe to repeat anything)."""
    if isinstance(exc, requests.exceptions.ConnectTimeout):
        return True
    if isinstance(exc, requests.exceptions.ConnectionError):
        reason: Any = exc.args[0] if exc.args else None
        if isinstance(reason, urllib3.exceptions.MaxRetryError):
            reason = reason.reason
        # NewConnectionError covers refused connections and DNS failures: no connection, no request.
        return isinstance(reason, urllib3.exceptions.NewConnectionError)
    return False


def _parse_retry_after(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        # The HTTP-date form is legal but Podium sends seconds; fall back to our own backoff.
        return None
    return max(seconds, 0.0)


class PodiumClient:
    """A client for the Podium v4 contact API.

    Configuration is explicit: `base_url` (e.g. `https://api.podium.com`), and either a static
    `access_token` or `oauth` credentials for the refresh-token flow. Every call has a `timeout`.
    Transient failures (429 honoring `Retry-After`, 5xx, connection failures) are retried up to
    `max_retries` times with exponential backoff and full jitter between `backoff_base` and
    `backoff_cap` seconds, logging one WARNING per retry on the `podium_client` logger. Merges are
    never repeated when their outcome is in doubt: that raises MergeOutcomeUnknown instead.

    `requests_per_minute` paces all threads sharing this client under Podium's budget. The client
    is safe to share between a few threads (`pool_size` connections are kept alive).

    The client offers soft delete and restore only; Podium's hard delete is deliberately absent.
    """

    def __init__(
        self,
        base_url: str,
        access_token: str | None = None,
        oauth: OAuthCredentials | None = None,
        timeout: float = 10,
        max_retries: int = 4,
        requests_per_minute: float | None = None,
        *,
        backoff_base: float = 0.5,
        backoff_cap: float = 30.0,
        max_retry_after: float = 120.0,
        pool_size: int = 8,
        seed: int | None = None,
    ) -> None:
        if max_retries < 0:
            raise ValueError("max_retries must be >= 0")
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.max_retries = max_retries
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        self.max_retry_after = max_retry_after
        self._rng = random.Random(seed)
        self._session = requests.Session()
        # The adapter's own retries stay off: every retry decision is made in _request, where it
        # knows whether the call is a merge.
        adapter = HTTPAdapter(pool_connections=4, pool_maxsize=pool_size, max_retries=0)
        self._session.mount("http://", adapter)
        self._session.mount("https://", adapter)
        self._session.headers["User-Agent"] = "podium-dedup (podium_client)"
        self._session.headers["Accept"] = "application/json"
        self._tokens = TokenManager(self._session, timeout, access_token=access_token, oauth=oauth)
        self.rate_limiter = RateLimiter(requests_per_minute) if requests_per_minute else None

    # --- lifecycle --------------------------------------------------------------------------------

    def close(self) -> None:
        """Close pooled connections."""
        self._session.close()

    def __enter__(self) -> PodiumClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"PodiumClient(base_url={self.base_url!r})"

    @property
    def token_refresh_count(self) -> int:
        """How many times an OAuth access token was fetched."""
        return self._tokens.refresh_count

    # --- locations --------------------------------------------------------------------------------

    def list_locations(self) -> list[Location]:
        """All locations of the organization."""
        body, _ = self._request("GET", "/v4/locations")
        return wire.parse_location_list(body)

    # --- reading contacts ---------------------------------------------------------------------------

    def list_contacts_page(
        self,
        location_uid: str,
        *,
        updated_since: datetime | None = None,
        include_deleted: bool = False,
        page_size: int = MAX_PAGE_SIZE,
        cursor: str | None = None,
    ) -> ContactPage:
        """One page of a location's contacts.

        With `cursor` (from a previous page's `next_cursor`), the filters are those the cursor was
        made with; the others are ignored by Podium. `updated_since` is an aware datetime (a naive
        one is taken as UTC).
        """
        if not 1 <= page_size <= MAX_PAGE_SIZE:
            raise ValueError(f"page_size must be between 1 and {MAX_PAGE_SIZE}")
        params: dict[str, str | int] = {"locationUid": location_uid, "limit": page_size}
        if cursor is not None:
            params["cursor"] = cursor
        else:
            if updated_since is not None:
                params["updatedSince"] = wire.format_timestamp(updated_since)
            if include_deleted:
                params["includeDeleted"] = "true"
        body, request_id = self._request("GET", "/v4/contacts", params=params)
        page = wire.parse_contact_page(body, request_id)
        if cursor is not None and page.next_cursor == cursor:
            # Following it would loop forever.
            raise MalformedResponse("server returned the same cursor it was given", request_id=request_id)
        return page

    def iter_contact_pages(
        self,
        location_uid: str,
        updated_since: datetime | None = None,
        include_deleted: bool = False,
        page_size: int = MAX_PAGE_SIZE,
        cursor: str | None = None,
    ) -> Iterator[ContactPage]:
        """Yield a location's contacts page by page, following cursors to the end.

        Each page is a list of Contact with `next_cursor` set, so a caller can checkpoint after
        processing a page and later resume with `cursor=`.
        """
        page = self.list_contacts_page(
            location_uid,
            updated_since=updated_since,
            include_deleted=include_deleted,
            page_size=page_size,
            cursor=cursor,
        )
        while True:
            yield page
            if page.next_cursor is None:
                return
            page = self.list_contacts_page(location_uid, page_size=page_size, cursor=page.next_cursor)

    def iter_contacts(
        self,
        location_uid: str,
        updated_since: datetime | None = None,
        include_deleted: bool = False,
        page_size: int = MAX_PAGE_SIZE,
    ) -> Iterator[Contact]:
        """Yield every contact of a location, following cursors."""
        for page in self.iter_contact_pages(location_uid, updated_since, include_deleted, page_size):
            yield from page

    def get_contact(self, uid: str) -> Contact:
        """One contact by uid, soft-deleted ones included; NotFoundError when unknown."""
        body, request_id = self._request("GET", self._contact_path(uid))
        return wire.parse_contact_response(body, request_id)

    # --- writing contacts ---------------------------------------------------------------------------

    def create_contact(
        self,
        location_uid: str,
        name: str | None = None,
        channels: Iterable[Channel] = (),
        tags: Iterable[str] = (),
        attributes: Iterable[Attribute] = (),
        address: str | None = None,
        marketing_opt_out: bool = False,
        sms_opt_out: bool = False,
        email_opt_out: bool = False,
    ) -> Contact:
        """Create a contact (used for seeding, demos and webhook tests).

        Not repeated when the outcome is in doubt (that could create it twice): a connection lost
        after sending surfaces as APIConnectionError.
        """
        body = wire.contact_create_body(
            location_uid,
            name,
            channels,
            tags,
            attributes,
            address,
            marketing_opt_out,
            sms_opt_out,
            email_opt_out,
        )
        resp, request_id = self._request("POST", "/v4/contacts", json_body=body, repeatable=False)
        return wire.parse_contact_response(resp, request_id)

    def update_contact(self, uid: str, fields: Mapping[str, Any]) -> Contact:
        """PATCH a contact and return it as Podium now holds it.

        `fields` uses the wire's names (`name`, `channels`, `tags`, `attributes`, `address`,
        `marketingOptOut`, `smsOptOut`, `emailOptOut`); `tags` may be labels, `channels` and
        `attributes` Channel/Attribute objects. A field that is not writable raises ValueError
        before any call.
        """
        body = wire.fields_to_wire(fields)
        resp, request_id = self._request("PATCH", self._contact_path(uid), json_body=body)
        return wire.parse_contact_response(resp, request_id)

    def delete_contact(self, uid: str) -> None:
        """Soft-delete a contact (hidden from listings, restorable). There is no hard delete."""
        self._request("DELETE", self._contact_path(uid))

    def restore_contact(self, uid: str) -> Contact:
        """Undo a soft delete, including a merged duplicate's (clears deletedAt and mergedIntoUid)."""
        resp, request_id = self._request("POST", self._contact_path(uid) + "/restore")
        return wire.parse_contact_response(resp, request_id)

    def merge(self, primary_uid: str, duplicate_uids: Sequence[str]) -> Contact:
        """Merge duplicates into the primary; returns the primary as Podium holds it afterwards.

        Podium keeps only the primary's own fields. Raises InvalidDuplicateError (400), NotFoundError
        (404 primary), ConflictError (409), UnprocessableError (422), and MergeOutcomeUnknown when
        the request may have been applied but its answer was lost.
        """
        dups = list(duplicate_uids)
        if not dups:
            raise ValueError("merge needs at least one duplicate uid")
        resp, request_id = self._request(
            "POST",
            self._contact_path(primary_uid) + "/merge",
            json_body=wire.merge_body(dups),
            repeatable=False,
            merge=(primary_uid, dups),
        )
        return wire.parse_contact_response(resp, request_id)

    # --- the one place that talks HTTP --------------------------------------------------------------

    @staticmethod
    def _contact_path(uid: str) -> str:
        return "/v4/contacts/" + quote(uid, safe="")

    def _backoff(self, retry_index: int) -> float:
        return self._rng.uniform(0, min(self.backoff_cap, self.backoff_base * (2**retry_index)))

    def _request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str | int] | None = None,
        json_body: Any = None,
        repeatable: bool = True,
        merge: tuple[str, list[str]] | None = None,
    ) -> tuple[Any, str | None]:
        """Send one call with the retry policy; returns (decoded JSON body or None, request id).

        `repeatable=False` marks calls that must not be sent twice when their outcome is unknown
        (create, merge): only failures that prove nothing was done are retried for them.
        """
        retries = 0
        may_refresh = True
        while True:
            if self.rate_limiter is not None:
                self.rate_limiter.acquire()
            try:
                return self._attempt(method, path, params, json_body, repeatable, merge, may_refresh)
            except _TokenRefreshed:
                # The contract allows one refresh-and-retry per call; a second 401 surfaces.
                may_refresh = False
                continue
            except _Retry as retry:
                error, retry_after = retry.error, retry.retry_after
            if retries >= self.max_retries:
                raise error
            if retry_after is not None:
                if retry_after > self.max_retry_after:
                    raise error
                delay = retry_after + self._rng.uniform(0, min(self.backoff_cap, self.backoff_base))
            else:
                delay = self._backoff(retries)
            retries += 1
            logger.warning(
                "podium_client: retry %d/%d of %s %s after %s; sleeping %.2fs",
                retries,
                self.max_retries,
                method,
                path,
                error.http_status or type(error).__name__,
                delay,
            )
            time.sleep(delay)

    def _attempt(
        self,
        method: str,
        path: str,
        params: Mapping[str, str | int] | None,
        json_body: Any,
        repeatable: bool,
        merge: tuple[str, list[str]] | None,
        may_refresh: bool,
    ) -> tuple[Any, str | None]:
        """One HTTP exchange. Returns on success, raises _Retry for a transient failure worth
        repeating, _TokenRefreshed after a successful refresh, and the final error otherwise."""
        try:
            token = self._tokens.token()
        except PodiumError as exc:
            if is_retryable_auth_failure(exc):
                raise _Retry(exc) from exc
            raise
        try:
            resp = self._session.request(
                method,
                self.base_url + path,
                params=params,
                json=json_body,
                headers={"Authorization": f"Bearer {token}"},
                timeout=self.timeout,
            )
        except _PROGRAMMING_ERRORS as exc:
            raise APIConnectionError(f"{method} {path}: {exc}") from exc
        except requests.RequestException as exc:
            if _nothing_was_sent(exc):
                raise _Retry(
                    _caused_by(
                        APIConnectionError(f"{method} {path}: {type(exc).__name__} before sending"), exc
                    )
                ) from exc
            cause = f"{type(exc).__name__} after sending"
            if merge is not None:
                raise MergeOutcomeUnknown(merge[0], merge[1], cause) from exc
            if not repeatable:
                raise APIConnectionError(f"{method} {path}: {cause}; outcome unknown") from exc
            raise _Retry(_caused_by(APIConnectionError(f"{method} {path}: {cause}"), exc)) from exc

        request_id = resp.headers.get("X-Request-Id")
        status = resp.status_code
        if 200 <= status < 300:
            return self._decode_success(resp, request_id), request_id
        body = self._decode_error(resp)
        code, message, uid = wire.parse_error_body(body)
        if status == 401 and code == "token_expired" and may_refresh and self._tokens.can_refresh:
            try:
                self._tokens.refresh_after_rejection(token)
            except PodiumError as exc:
                if is_retryable_auth_failure(exc):
                    raise _Retry(exc) from exc
                raise
            raise _TokenRefreshed
        cls = error_class_for(status, code)
        text = message or f"{method} {path} answered HTTP {status}"
        fields: dict[str, Any] = {
            "http_status": status,
            "code": code,
            "uid": uid,
            "request_id": request_id,
            "body": body,
        }
        if cls is RateLimitError:
            retry_after = _parse_retry_after(resp.headers.get("Retry-After"))
            error: PodiumError = RateLimitError(text, retry_after, **fields)
        else:
            retry_after = None
            error = cls(text, **fields)
        if not isinstance(error, RateLimitError | ServerError):
            raise error
        if not repeatable and status not in _MERGE_SAFE_STATUSES:
            if merge is not None:
                raise MergeOutcomeUnknown(
                    merge[0], merge[1], f"HTTP {status}", http_status=status, code=code, request_id=request_id
                ) from error
            raise error
        raise _Retry(error, retry_after)

    @staticmethod
    def _decode_success(resp: requests.Response, request_id: str | None) -> Any:
        if resp.status_code == 204 or not resp.content:
            return None
        try:
            # json.loads on bytes detects the UTF encoding itself; resp.json() would first guess a
            # charset with chardet-style sniffing, which costs more than parsing a page.
            return json.loads(resp.content)
        except ValueError:
            raise MalformedResponse(
                f"HTTP {resp.status_code} response is not JSON",
                http_status=resp.status_code,
                request_id=request_id,
                body=resp.content[:200],
            ) from None

    @staticmethod
    def _decode_error(resp: requests.Response) -> Any:
        try:
            return json.loads(resp.content) if resp.content else None
        except ValueError:
            # Proxies answer errors in HTML; keep a little of it for the error report.
            return resp.content[:200]
