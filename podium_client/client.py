"""The Podium API client: typed calls over Podium's published v4 API, one retry policy, pacing, refresh.

Part 1 of the contract (what every tenant serves) is the client's surface. Part 2 (``merge``,
``restore``, ``soft-delete``) is reachable only when the client is told the tenant has it
(``capabilities=``); calling one otherwise raises ``CapabilityMissing`` before anything is sent.
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import random
import threading
import time
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from datetime import datetime
from types import TracebackType
from typing import Any, Protocol
from urllib.parse import quote

import requests
import urllib3.exceptions
from requests.adapters import HTTPAdapter

from podium_client import types as wire
from podium_client.auth import OAuthCredentials, TokenManager, is_retryable_auth_failure
from podium_client.errors import (
    APIConnectionError,
    CapabilityMissing,
    MalformedResponse,
    MergeOutcomeUnknown,
    PodiumError,
    RateLimitError,
    ServerError,
    error_class_for,
)
from podium_client.ratelimit import RateLimiter
from podium_client.types import (
    Address,
    AttributeDefinition,
    Contact,
    ContactPage,
    Location,
    LocationPage,
    Tag,
    Webhook,
)

logger = logging.getLogger("podium_client")

MAX_PAGE_SIZE = 100
DEFAULT_API_VERSION = "2021.04.01"
CAPABILITIES = frozenset({"merge", "restore", "soft-delete"})

# Statuses a non-repeatable call may safely repeat: Podium answers them before doing anything. Any other
# 5xx could come from a proxy after the call went through, so its outcome is unknown.
_SAFE_TO_REPEAT_STATUSES = frozenset({429, 503})

_PROGRAMMING_ERRORS = (
    requests.exceptions.InvalidURL,
    requests.exceptions.MissingSchema,
    requests.exceptions.InvalidSchema,
    requests.exceptions.InvalidHeader,
)


class Pacer(Protocol):
    """What the client needs of a rate limiter: wait for a slot, and hear about Podium's refusals."""

    def acquire(self, priority: int = 0) -> float: ...

    def penalize(self, retry_after: float | None) -> None: ...


class _Retry(Exception):
    """Internal: a transient failure the retry loop may repeat."""

    def __init__(self, error: PodiumError, retry_after: float | None = None) -> None:
        super().__init__(error.message)
        self.error = error
        self.retry_after = retry_after


class _TokenRefreshed(Exception):
    """Internal: the access token was refreshed after a 401; send the call again."""


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


def _tag_key(label: str) -> str:
    return label.casefold()


def _parse_int(text: str) -> int | float:
    """An integer as JSON spells it; one too long for Python's int parser (over 4,300 digits) reads as
    a float (infinity), so one absurd value makes its record unreadable instead of the whole page."""
    return int(text) if len(text) <= 4000 else float(text)


def _segment(value: str) -> str:
    return quote(value, safe="@+")


class PodiumClient:
    """A client for Podium's v4 API.

    Configuration is explicit: ``base_url`` (``https://api.podium.com``), a static ``access_token`` or
    ``oauth`` credentials for the refresh-token flow, the ``api_version`` sent as ``podium-version``, and
    the tenant's Part 2 ``capabilities``. Every call has a ``timeout``. Transient failures (``rate_limit``
    honoring ``Retry-After``, 5xx, connection failures) are retried up to ``max_retries`` times with
    exponential backoff and full jitter, logging one WARNING per retry. A call that must not be sent
    twice (create, merge) is never repeated when its outcome is in doubt.

    ``rate_limiter`` paces every request; pass one shared by all clients using the same credentials
    (``requests_per_minute`` builds a private one). ``request_counts`` counts what was sent, by route.
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
        rate_limiter: Pacer | None = None,
        api_version: str = DEFAULT_API_VERSION,
        capabilities: Collection[str] = (),
        backoff_base: float = 0.5,
        backoff_cap: float = 30.0,
        max_retry_after: float = 120.0,
        pool_size: int = 8,
        seed: int | None = None,
    ) -> None:
        if max_retries < 0:
            raise ValueError("max_retries must be >= 0")
        unknown = set(capabilities) - CAPABILITIES
        if unknown:
            raise ValueError(f"unknown capabilities {sorted(unknown)}; known: {sorted(CAPABILITIES)}")
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.max_retries = max_retries
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        self.max_retry_after = max_retry_after
        self.capabilities = frozenset(capabilities)
        self._rng = random.Random(seed)
        self._session = requests.Session()
        # The adapter's own retries stay off: every retry decision is made in _request, where it knows
        # whether the call may be repeated.
        adapter = HTTPAdapter(pool_connections=4, pool_maxsize=pool_size, max_retries=0)
        self._session.mount("http://", adapter)
        self._session.mount("https://", adapter)
        self._session.headers["User-Agent"] = "podium-dedup (podium_client)"
        self._session.headers["Accept"] = "application/json"
        self._session.headers["podium-version"] = api_version
        self._tokens = TokenManager(self._session, timeout, access_token=access_token, oauth=oauth)
        if rate_limiter is None and requests_per_minute:
            rate_limiter = RateLimiter(requests_per_minute)
        self.rate_limiter = rate_limiter
        self._counts_lock = threading.Lock()
        self.request_counts: collections.Counter[str] = collections.Counter()
        self._priority = threading.local()
        self._tags_by_label: dict[str, Tag] | None = None

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
        return f"PodiumClient(base_url={self.base_url!r}, capabilities={sorted(self.capabilities)!r})"

    @property
    def token_refresh_count(self) -> int:
        """How many times an OAuth access token was fetched."""
        return self._tokens.refresh_count

    @property
    def requests_sent(self) -> int:
        """Every request sent so far (retries included)."""
        with self._counts_lock:
            return sum(self.request_counts.values())

    def has(self, capability: str) -> bool:
        """True when the tenant was declared to have that Part 2 capability."""
        return capability in self.capabilities

    @contextlib.contextmanager
    def priority(self, level: int) -> Iterator[None]:
        """Calls made in this block (this thread) ask the rate limiter for ``level`` (higher goes first)."""
        previous = getattr(self._priority, "level", 0)
        self._priority.level = level
        try:
            yield
        finally:
            self._priority.level = previous

    def _require(self, capability: str) -> None:
        if capability not in self.capabilities:
            raise CapabilityMissing(
                f"this call needs the '{capability}' capability, which Podium's published API does not have "
                f"(declared: {sorted(self.capabilities) or 'none'})"
            )

    # --- locations --------------------------------------------------------------------------------

    def list_locations_page(
        self, *, cursor: str | None = None, limit: int = MAX_PAGE_SIZE, updated_after: datetime | None = None
    ) -> LocationPage:
        """One page of the organization's locations."""
        params = self._page_params(cursor, limit)
        if cursor is None and updated_after is not None:
            params["updatedAfter"] = wire.format_timestamp(updated_after)
        body, _ = self._request("GET", "/v4/locations", "GET /v4/locations", params=params)
        return wire.parse_location_page(body)

    def list_locations(self) -> list[Location]:
        """Every location of the organization, following cursors."""
        out: list[Location] = []
        cursor: str | None = None
        while True:
            page = self.list_locations_page(cursor=cursor)
            out.extend(page)
            if page.next_cursor is None:
                return out
            if page.next_cursor == cursor:
                # Following it would loop; stopping quietly would hand back a partial list as if whole.
                raise MalformedResponse("server returned the same locations cursor it was given")
            cursor = page.next_cursor

    def get_location(self, uid: str) -> Location:
        """One location by uid."""
        body, _ = self._request("GET", "/v4/locations/" + _segment(uid), "GET /v4/locations/{uid}")
        return Location.from_wire(wire.unwrap_object(body))

    # --- reading contacts ---------------------------------------------------------------------------

    def list_contacts_page(
        self,
        *,
        updated_after: datetime | None = None,
        cursor: str | None = None,
        limit: int = MAX_PAGE_SIZE,
        include_deleted: bool = False,
    ) -> ContactPage:
        """One page of the organization's contacts (every location).

        ``updated_after`` becomes Podium's ``updated_at`` filter (second precision, strictly after);
        with ``cursor`` the filters are those the cursor was made with. ``include_deleted`` needs the
        ``soft-delete`` capability.
        """
        params = self._page_params(cursor, limit)
        if include_deleted:
            self._require("soft-delete")
            params["includeDeleted"] = "true"
        if cursor is None and updated_after is not None:
            params["updated_at"] = wire.format_filter_timestamp(updated_after)
        body, request_id = self._request("GET", "/v4/contacts", "GET /v4/contacts", params=params)
        page = wire.parse_contact_page(body, request_id)
        if cursor is not None and page.next_cursor == cursor:
            # Following it would loop forever.
            raise MalformedResponse("server returned the same cursor it was given", request_id=request_id)
        return page

    def iter_contact_pages(
        self,
        *,
        updated_after: datetime | None = None,
        cursor: str | None = None,
        limit: int = MAX_PAGE_SIZE,
        include_deleted: bool = False,
    ) -> Iterator[ContactPage]:
        """Yield the organization's contacts page by page, following cursors to the end.

        Each page carries ``next_cursor``, so a caller can checkpoint after a page and resume later with
        ``cursor=``.
        """
        page = self.list_contacts_page(
            updated_after=updated_after, cursor=cursor, limit=limit, include_deleted=include_deleted
        )
        while True:
            yield page
            if page.next_cursor is None:
                return
            page = self.list_contacts_page(
                cursor=page.next_cursor, limit=limit, include_deleted=include_deleted
            )

    def iter_contacts(
        self, *, updated_after: datetime | None = None, limit: int = MAX_PAGE_SIZE
    ) -> Iterator[Contact]:
        """Yield every contact of the organization, following cursors."""
        for page in self.iter_contact_pages(updated_after=updated_after, limit=limit):
            yield from page

    def get_contact(self, identifier: str) -> Contact:
        """One contact by identifier (see ``podium_client.identifiers``); NotFoundError when none answers."""
        body, request_id = self._request(
            "GET", self._contact_path(identifier), "GET /v4/contacts/{identifier}"
        )
        return wire.parse_contact_response(body, request_id)

    # --- writing contacts ---------------------------------------------------------------------------

    def create_contact(
        self,
        name: str,
        location_uids: Sequence[str],
        *,
        phone_number: str | None = None,
        email: str | None = None,
        address: Address | None = None,
        attributes: Iterable[tuple[str, str]] = (),
    ) -> str | None:
        """``POST /v4/contacts`` — an upsert on a matching phone or email; returns the identifier Podium
        answered (read the contact back with it).

        Never repeated when the outcome is in doubt (that could create the contact twice): a connection
        lost after sending surfaces as APIConnectionError.
        """
        body = wire.contact_create_body(
            name,
            location_uids,
            phone_number=phone_number,
            email=email,
            address=address,
            attributes=attributes,
        )
        resp, _ = self._request("POST", "/v4/contacts", "POST /v4/contacts", json_body=body, repeatable=False)
        return wire.parse_write_identifier(resp)

    def update_contact(self, identifier: str, fields: Mapping[str, Any]) -> str | None:
        """``PATCH /v4/contacts/{identifier}``; Podium answers 202, so read the contact back to see it.

        ``fields`` uses Podium's names (``name``, ``email``, ``phoneNumber``, ``address``, ``locations``,
        ``contactStatus``, ``conversationUid``); any other raises ValueError before a call is made.
        """
        body = wire.contact_patch_body(fields)
        resp, _ = self._request(
            "PATCH", self._contact_path(identifier), "PATCH /v4/contacts/{identifier}", json_body=body
        )
        return wire.parse_write_identifier(resp)

    def delete_contact(self, identifier: str) -> None:
        """``DELETE /v4/contacts/{identifier}``. Podium documents that this removes the contact's data
        (a ``soft-delete`` tenant only hides it). The caller keeps a snapshot first; there is no purge."""
        self._request("DELETE", self._contact_path(identifier), "DELETE /v4/contacts/{identifier}")

    def opt_out_phone(self, phone_e164: str) -> Contact | None:
        """``campaigns/opt_out``: withdraw the marketing consent of that phone number."""
        resp, request_id = self._request(
            "POST",
            "/v4/contacts/campaigns/opt_out",
            "POST /v4/contacts/campaigns/opt_out",
            json_body=wire.opt_out_body(phone_e164),
        )
        if resp is None:
            return None
        data = wire.unwrap_object(resp)
        return None if data is None else Contact.from_wire(data, request_id)

    # --- tags and attributes ---------------------------------------------------------------------------

    def list_tags(self) -> list[Tag]:
        """The organization's tags."""
        body, _ = self._request("GET", "/v4/contact_tags", "GET /v4/contact_tags")
        tags = wire.parse_tag_list(body)
        self._tags_by_label = {_tag_key(t.label): t for t in tags}
        return tags

    def create_tag(self, label: str, description: str = "") -> Tag:
        """Create an organization tag."""
        body, _ = self._request(
            "POST",
            "/v4/contact_tags",
            "POST /v4/contact_tags",
            json_body={"label": label, "description": description},
            repeatable=False,
        )
        tag = wire.Tag.from_wire(wire.unwrap_object(body))
        if self._tags_by_label is not None:
            self._tags_by_label[_tag_key(tag.label)] = tag
        return tag

    def ensure_tag(self, label: str, description: str = "") -> Tag:
        """The organization's tag with that label, created when it does not exist.

        Labels are matched case-insensitively: the organization holds one tag per label in any case,
        so creating ``VIP`` beside ``vip`` would be refused.
        """
        key = _tag_key(label)
        if self._tags_by_label is None or key not in self._tags_by_label:
            self.list_tags()
        assert self._tags_by_label is not None
        found = self._tags_by_label.get(key)
        return found if found is not None else self.create_tag(label, description)

    def attach_tag(self, identifier: str, tag_uid: str) -> None:
        """Attach an organization tag to a contact (202)."""
        self._request(
            "POST",
            f"{self._contact_path(identifier)}/tags/{_segment(tag_uid)}",
            "POST /v4/contacts/{identifier}/tags/{uid}",
        )

    def list_attribute_definitions(self) -> list[AttributeDefinition]:
        """The organization's attribute definitions."""
        body, _ = self._request("GET", "/v4/contact_attributes", "GET /v4/contact_attributes")
        return wire.parse_attribute_definitions(body)

    def set_attribute(
        self, identifier: str, attribute_uid: str, value: str, *, existing: bool = False
    ) -> None:
        """Set a contact's value of an attribute: POST adds it, PATCH (``existing=True``) changes it."""
        method = "PATCH" if existing else "POST"
        self._request(
            method,
            f"{self._contact_path(identifier)}/attributes/{_segment(attribute_uid)}",
            f"{method} /v4/contacts/{{identifier}}/attributes/{{uid}}",
            json_body={"value": value},
        )

    # --- webhooks ---------------------------------------------------------------------------------------

    def list_webhooks(self) -> list[Webhook]:
        """The webhooks registered with these credentials."""
        body, _ = self._request("GET", "/v4/webhooks", "GET /v4/webhooks")
        items = wire.unwrap_object(body)
        if not isinstance(items, list):
            raise MalformedResponse("webhook list 'data' is not a list", body=body)
        return [Webhook.from_wire(item) for item in items]

    def create_webhook(
        self,
        url: str,
        event_types: Sequence[str],
        secret: str,
        *,
        organization_uid: str | None = None,
        location_uid: str | None = None,
    ) -> Webhook:
        """Register a webhook (``organization_uid`` or ``location_uid``). The secret is never logged."""
        if (organization_uid is None) == (location_uid is None):
            raise ValueError("a webhook belongs to an organization or a location: give exactly one")
        body: dict[str, Any] = {"url": url, "eventTypes": list(event_types), "secret": secret}
        if organization_uid is not None:
            body["organizationUid"] = organization_uid
        else:
            body["locationUid"] = location_uid
        resp, _ = self._request("POST", "/v4/webhooks", "POST /v4/webhooks", json_body=body, repeatable=False)
        return Webhook.from_wire(wire.unwrap_object(resp))

    def delete_webhook(self, uid: str) -> None:
        """Remove a webhook."""
        self._request("DELETE", "/v4/webhooks/" + _segment(uid), "DELETE /v4/webhooks/{uid}")

    # --- Part 2 capabilities ------------------------------------------------------------------------------

    def merge(self, primary_uid: str, duplicate_uids: Sequence[str]) -> Contact:
        """Capability ``merge``: merge duplicates into the primary; returns the primary afterwards.

        The primary keeps only its own fields. Raises InvalidDuplicateError (400), NotFoundError (404),
        ConflictError (409), UnprocessableError (422), and MergeOutcomeUnknown when the request may have
        been applied but its answer was lost.
        """
        self._require("merge")
        dups = list(duplicate_uids)
        if not dups:
            raise ValueError("merge needs at least one duplicate uid")
        resp, request_id = self._request(
            "POST",
            self._contact_path(primary_uid) + "/merge",
            "POST /v4/contacts/{uid}/merge",
            json_body=wire.merge_body(dups),
            repeatable=False,
            merge=(primary_uid, dups),
        )
        return wire.parse_contact_response(resp, request_id)

    def restore_contact(self, uid: str) -> Contact:
        """Capability ``restore``: un-hide a merged or deleted contact."""
        self._require("restore")
        resp, request_id = self._request(
            "POST", self._contact_path(uid) + "/restore", "POST /v4/contacts/{uid}/restore"
        )
        return wire.parse_contact_response(resp, request_id)

    # --- the one place that talks HTTP --------------------------------------------------------------

    @staticmethod
    def _contact_path(identifier: str) -> str:
        if not identifier:
            raise ValueError("a contact identifier cannot be empty")
        return "/v4/contacts/" + _segment(identifier)

    @staticmethod
    def _page_params(cursor: str | None, limit: int) -> dict[str, str | int]:
        if not 1 <= limit <= MAX_PAGE_SIZE:
            raise ValueError(f"limit must be between 1 and {MAX_PAGE_SIZE}")
        params: dict[str, str | int] = {"limit": limit}
        if cursor is not None:
            params["cursor"] = cursor
        return params

    def _backoff(self, retry_index: int) -> float:
        return self._rng.uniform(0, min(self.backoff_cap, self.backoff_base * (2**retry_index)))

    def _request(
        self,
        method: str,
        path: str,
        route: str,
        *,
        params: Mapping[str, str | int] | None = None,
        json_body: Any = None,
        repeatable: bool = True,
        merge: tuple[str, list[str]] | None = None,
    ) -> tuple[Any, str | None]:
        """Send one call with the retry policy; returns (decoded JSON body or None, request id).

        ``repeatable=False`` marks calls that must not be sent twice when their outcome is unknown
        (create, merge): only failures that prove nothing was done are retried for them.
        """
        retries = 0
        may_refresh = True
        while True:
            if self.rate_limiter is not None:
                self.rate_limiter.acquire(getattr(self._priority, "level", 0))
            with self._counts_lock:
                self.request_counts[route] += 1
            try:
                return self._attempt(method, path, params, json_body, repeatable, merge, may_refresh)
            except _TokenRefreshed:
                # The contract allows one refresh-and-retry per call; a second 401 surfaces.
                may_refresh = False
                continue
            except _Retry as retry:
                error, retry_after = retry.error, retry.retry_after
            if isinstance(error, RateLimitError) and self.rate_limiter is not None:
                self.rate_limiter.penalize(retry_after)
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
                "podium_client: retry %d/%d of %s after %s; sleeping %.2fs",
                retries,
                self.max_retries,
                route,
                error.code or error.http_status or type(error).__name__,
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
        if status == 401 and may_refresh and self._tokens.can_refresh:
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
        if (
            not repeatable
            and status not in _SAFE_TO_REPEAT_STATUSES
            and not isinstance(error, RateLimitError)
        ):
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
            return json.loads(resp.content, parse_int=_parse_int)
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
