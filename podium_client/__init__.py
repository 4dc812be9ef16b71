"""A typed client for Podium's published v4 API, and an emulator of it (`podium_client.emulator`).

Nothing here imports Django: the product's `dedup` app uses this package, never the other way round.
`CONTRACT.md` beside this file says, rule by rule, what Podium publishes and how loose parts are read.
"""

from __future__ import annotations

from podium_client.auth import OAuthCredentials
from podium_client.client import CAPABILITIES, PodiumClient
from podium_client.consent import ConsentFlags, consent_flags
from podium_client.errors import (
    APIConnectionError,
    AuthenticationError,
    CapabilityMissing,
    ConflictError,
    InvalidCursorError,
    InvalidDuplicateError,
    InvalidRequestError,
    MalformedResponse,
    MergeOutcomeUnknown,
    NotFoundError,
    PermissionDeniedError,
    PodiumError,
    RateLimitError,
    ServerError,
    UnaddressableContact,
    UnprocessableError,
    WebhookSignatureError,
)
from podium_client.identifiers import identifier_for
from podium_client.types import (
    EMAIL,
    PHONE,
    Address,
    Attribute,
    AttributeDefinition,
    Channel,
    Contact,
    ContactPage,
    Location,
    Tag,
    Webhook,
    WebhookEvent,
)

__all__ = [
    "CAPABILITIES",
    "EMAIL",
    "PHONE",
    "APIConnectionError",
    "Address",
    "Attribute",
    "AttributeDefinition",
    "AuthenticationError",
    "CapabilityMissing",
    "Channel",
    "ConflictError",
    "ConsentFlags",
    "Contact",
    "ContactPage",
    "InvalidCursorError",
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
    "Tag",
    "UnaddressableContact",
    "UnprocessableError",
    "Webhook",
    "WebhookEvent",
    "WebhookSignatureError",
    "consent_flags",
    "identifier_for",
]
