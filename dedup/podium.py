"""The one place ``dedup`` builds a Podium client: from settings and the deployment policy.

Nothing in ``dedup`` builds a URL or parses a raw response; that is ``podium_client``'s job.
"""

from __future__ import annotations

from django.conf import settings

from podium_client import OAuthCredentials, PodiumClient


def get_client(
    *,
    requests_per_minute: int | None = None,
    max_retries: int | None = None,
    backoff_base: float | None = None,
    backoff_cap: float | None = None,
) -> PodiumClient:
    """A client for the configured Podium, paced at the policy's rate budget unless told otherwise.

    ``backoff_base``/``backoff_cap`` override the client's retry backoff (tests use tiny values).
    Callers close it (it is a context manager) when their job is done.
    """
    from dedup.models import Policy

    oauth = None
    if settings.PODIUM_OAUTH_URL and settings.PODIUM_REFRESH_TOKEN:
        oauth = OAuthCredentials(
            token_url=settings.PODIUM_OAUTH_URL.rstrip("/") + "/oauth/token",
            client_id=settings.PODIUM_CLIENT_ID,
            client_secret=settings.PODIUM_CLIENT_SECRET,
            refresh_token=settings.PODIUM_REFRESH_TOKEN,
        )
    if requests_per_minute is None:
        requests_per_minute = Policy.current().rate_limit_per_minute or None
    kwargs: dict[str, object] = {}
    if max_retries is not None:
        kwargs["max_retries"] = max_retries
    if backoff_base is not None:
        kwargs["backoff_base"] = backoff_base
    if backoff_cap is not None:
        kwargs["backoff_cap"] = backoff_cap
    return PodiumClient(
        settings.PODIUM_BASE_URL,
        access_token=settings.PODIUM_ACCESS_TOKEN or None,
        oauth=oauth,
        timeout=settings.PODIUM_TIMEOUT,
        requests_per_minute=requests_per_minute,
        **kwargs,  # type: ignore[arg-type]
    )
