"""Bearer tokens: a static token, or OAuth2 refresh-token flow with proactive and on-401 refresh."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import requests

from podium_client.errors import (
    APIConnectionError,
    AuthenticationError,
    MalformedResponse,
    PodiumError,
    RateLimitError,
    ServerError,
)

logger = logging.getLogger("podium_client")


@dataclass(frozen=True, slots=True)
class OAuthCredentials:
    """What the OAuth2 refresh-token flow needs; `token_url` is the full URL of the token endpoint."""

    token_url: str
    client_id: str
    client_secret: str = field(repr=False)
    refresh_token: str = field(repr=False)


class TokenManager:
    """Holds the current access token and refreshes it, once, for all threads sharing a client.

    With OAuth, a token is refreshed before use when its `expires_in` has (nearly) passed, and on any
    401 via `refresh_after_rejection` (Podium answers `unauthenticated` for an expired token). Podium may rotate the refresh token; the newest
    one is kept for the next refresh.
    """

    def __init__(
        self,
        session: requests.Session,
        timeout: float,
        access_token: str | None = None,
        oauth: OAuthCredentials | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if access_token is None and oauth is None:
            raise ValueError("PodiumClient needs an access_token or oauth credentials")
        self._session = session
        self._timeout = timeout
        self._oauth = oauth
        self._clock = clock
        self._lock = threading.Lock()
        self._access_token = access_token
        self._refresh_token = oauth.refresh_token if oauth else None
        # A static token never expires client-side; Podium says so with a 401 if it does.
        self._expires_at: float | None = None
        self.refresh_count = 0

    @property
    def can_refresh(self) -> bool:
        """True when OAuth credentials allow fetching a new token."""
        return self._oauth is not None

    def token(self) -> str:
        """A token to send now, refreshing first when there is none yet or it has expired."""
        with self._lock:
            if self._access_token is not None and (
                self._expires_at is None or self._clock() < self._expires_at
            ):
                return self._access_token
            self._refresh_locked()
            assert self._access_token is not None
            return self._access_token

    def refresh_after_rejection(self, rejected_token: str) -> None:
        """Refresh because Podium rejected `rejected_token` (any 401).

        When another thread already replaced that token, its fresh one is used instead of
        refreshing again, so a burst of 401s from many threads costs one refresh.
        """
        if self._oauth is None:
            raise AuthenticationError("access token refused and no OAuth credentials to refresh it")
        with self._lock:
            if self._access_token == rejected_token:
                self._refresh_locked()

    def _refresh_locked(self) -> None:
        oauth = self._oauth
        if oauth is None:
            raise AuthenticationError("no access token and no OAuth credentials")
        # Podium's token endpoint takes a JSON body (its own sample posts JSON, not a form).
        payload = {
            "grant_type": "refresh_token",
            "client_id": oauth.client_id,
            "client_secret": oauth.client_secret,
            "refresh_token": self._refresh_token or oauth.refresh_token,
        }
        try:
            resp = self._session.post(oauth.token_url, json=payload, timeout=self._timeout)
        except requests.RequestException as exc:
            raise APIConnectionError(f"token refresh failed to connect: {type(exc).__name__}") from exc
        request_id = resp.headers.get("X-Request-Id")
        body: Any
        try:
            body = resp.json()
        except ValueError:
            body = None
        if resp.status_code == 429:
            raise RateLimitError(
                "token endpoint rate limited", http_status=429, request_id=request_id, body=body
            )
        if resp.status_code >= 500:
            raise ServerError(
                "token endpoint failed", http_status=resp.status_code, request_id=request_id, body=body
            )
        if resp.status_code != 200:
            raise AuthenticationError(
                "token refresh was refused", http_status=resp.status_code, request_id=request_id, body=body
            )
        if not isinstance(body, dict):
            raise MalformedResponse(
                "token response is not a JSON object", http_status=200, request_id=request_id
            )
        access, refresh, expires_in = (
            body.get("access_token"),
            body.get("refresh_token"),
            body.get("expires_in"),
        )
        if not isinstance(access, str) or not access:
            raise MalformedResponse(
                "token response has no access_token", http_status=200, request_id=request_id
            )
        if expires_in is not None and (
            isinstance(expires_in, bool) or not isinstance(expires_in, int | float)
        ):
            raise MalformedResponse(
                "token response expires_in is not a number", http_status=200, request_id=request_id
            )
        self._access_token = access
        if isinstance(refresh, str) and refresh:
            self._refresh_token = refresh
        if expires_in is None:
            self._expires_at = None
        else:
            # Refresh a little early so a token does not expire between the check and the server.
            skew = min(30.0, float(expires_in) / 10)
            self._expires_at = self._clock() + float(expires_in) - skew
        self.refresh_count += 1
        logger.info("podium_client: access token refreshed (expires_in=%s)", expires_in)


def is_retryable_auth_failure(exc: PodiumError) -> bool:
    """True for token-endpoint failures that a retry may cure (connection, 5xx, 429)."""
    return isinstance(exc, APIConnectionError | ServerError | RateLimitError)
