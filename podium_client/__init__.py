"""A typed client for the Podium v4 contact API, and an emulator of it (`podium_client.emulator`).

Nothing here imports Django: the product's `dedup` app uses this package, never the other way round.
"""

from __future__ import annotations

from podium_client.auth import OAuthCredentials
from podium_client.client import PodiumClient
from podium_client.errors import (
    APIConnectionError,
    AuthenticationError,
    ConflictError,
    InvalidDuplicateError,
    InvalidRequestError,
    MalformedResponse,
    MergeOutcomeUnknown,
    NotFoundError,
    PermissionDeniedError,
    PodiumError,
    RateLimitError,
    ServerError,
    UnprocessableError,
    WebhookSignatureError,
)
from podium_client.types import (
    EMAIL,
    PHONE,
    Attribute,
    Channel,
    Contact,
    ContactPage,
    Location,
    WebhookEvent,
)

__all__ = [
    "EMAIL",
    "PHONE",
    "APIConnectionError",
    "Attribute",
    "AuthenticationError",
    "Channel",
    "ConflictError",
    "Contact",
    "ContactPage",
    "InvalidDuplicateError",
    "InvalidRequestError",
    "Location",
    "MalformedResponse",
    "MergeOutcomeUnknown",
    "NotFoundError",
    "OAuthCredentials",
    "PermissionDeniedError",
    "PodiumClient",
    "PodiumError",
    "RateLimitError",
    "ServerError",
    "UnprocessableError",
    "WebhookEvent",
    "WebhookSignatureError",
]
