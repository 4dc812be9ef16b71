"""The one place ``dedup`` builds a Podium client, and addresses an indexed contact through it.

Nothing in ``dedup`` builds a URL or parses a raw response; that is ``podium_client``'s job. What
``dedup`` adds is knowledge of the whole organization: the index knows which phone numbers and emails
other contacts hold, which ``podium_client.identifiers`` needs to choose an identifier that reaches one
contact and no other.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from django.conf import settings
from django.db.models import Q

from podium_client import (
    Contact as PodiumContact,
)
from podium_client import (
    NotFoundError,
    OAuthCredentials,
    PodiumClient,
    UnaddressableContact,
    identifier_for,
)
from podium_client.types import (
    Address,
    Attribute,
    Channel,
    Tag,
    parse_timestamp,
)


def get_client(
    *,
    requests_per_minute: int | None = None,
    max_retries: int | None = None,
    backoff_base: float | None = None,
    backoff_cap: float | None = None,
) -> PodiumClient:
    """A client for the configured Podium, paced by the deployment's shared budget (``dedup.budget``).

    Every client this returns, in any process, draws from one budget of the policy's
    ``rate_limit_per_minute`` (``requests_per_minute`` overrides the rate; 0 turns pacing off, for
    tests). Calls ask for the priority of their context (``podium_client.ratelimit.prioritized``):
    interactive while a web request is served or a person's approval is merged, bulk otherwise.
    ``backoff_base``/``backoff_cap`` override the client's retry backoff (tests use tiny values).
    Callers close it (it is a context manager) when their job is done.
    """
    from dedup.budget import shared_pacer
    from dedup.models import Policy

    oauth = None
    if settings.PODIUM_REFRESH_TOKEN:
        oauth = OAuthCredentials(
            token_url=settings.PODIUM_TOKEN_URL,
            client_id=settings.PODIUM_CLIENT_ID,
            client_secret=settings.PODIUM_CLIENT_SECRET,
            refresh_token=settings.PODIUM_REFRESH_TOKEN,
        )
    if requests_per_minute is None:
        requests_per_minute = Policy.current().rate_limit_per_minute
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
        rate_limiter=shared_pacer(requests_per_minute) if requests_per_minute else None,
        api_version=settings.PODIUM_API_VERSION,
        capabilities=settings.PODIUM_CAPABILITIES,
        **kwargs,  # type: ignore[arg-type]
    )


# --- addressing indexed contacts ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Unaddressable:
    """The published API has no identifier that reaches this contact alone (see podium_client.identifiers)."""

    uid: str
    reason: str


def indexed_contact_as_podium(row: object) -> PodiumContact:
    """The typed Podium contact an index row stands for (as Podium showed it when it was indexed)."""
    from dedup.models import Contact

    assert isinstance(row, Contact)
    channels = tuple(
        Channel(
            type=str(c.get("type") or ""),
            identifier=str(c.get("identifier") or ""),
            label=c.get("label"),
            marketing_opted_in_location_uids=tuple(c.get("marketingOptedInLocationUids") or ()),
            transactional_opted_out_at=(
                parse_timestamp(c["transactionalOptedOutAt"]) if c.get("transactionalOptedOutAt") else None
            ),
        )
        for c in row.channels or []
        if isinstance(c, dict)
    )
    address = Address.from_wire(row.address) if isinstance(row.address, dict) else None
    return PodiumContact(
        uid=row.uid,
        name=row.name or None,
        location_uids=tuple(row.all_location_uids),
        channels=channels,
        tags=tuple(Tag(t.get("uid"), t.get("label") or "") for t in row.tags or [] if isinstance(t, dict)),
        attributes=tuple(
            Attribute(a.get("uid"), a.get("label") or "", a.get("value"), a.get("dataType"))
            for a in row.attributes or []
            if isinstance(a, dict)
        ),
        address=address,
        conversation_uids=tuple(row.conversations or ()),
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


def shared_keys(uid: str, keys: Iterable[str]) -> set[str]:
    """Which of these natural keys (E.164 numbers, normalized emails) another active contact holds."""
    from dedup.dblimits import in_values
    from dedup.models import ContactKey

    wanted = sorted(set(keys))
    if not wanted:
        return set()
    holders = ContactKey.objects.filter(
        key__in=in_values(wanted), contact__deleted_at__isnull=True, contact__merged_into_uid=""
    )
    return set(holders.filter(~Q(contact__uid=uid)).values_list("key", flat=True).distinct())


def phone_keys_of(contact: PodiumContact, region: str) -> dict[str, str | None]:
    """Each phone of the contact, as typed, to its E.164 (None when it is not a valid number)."""
    from dedup.phones import normalize_phone

    out: dict[str, str | None] = {}
    for phone in contact.phones:
        result = normalize_phone(phone, region)
        out[phone] = result.e164 if result.valid else None
    return out


def identifier_of(
    contact: PodiumContact,
    region: str,
    *,
    uid_addressing: bool = False,
    avoid_conversations: Iterable[str] = (),
    extra_shared: Iterable[str] = (),
) -> str:
    """The identifier that reaches ``contact`` and no other, judged against the whole index.

    ``uid_addressing`` is for tenants with a Part 2 capability (they take contact uids).
    ``extra_shared`` names keys to treat as shared although the index does not know it yet (a value the
    product is about to write onto another contact). Raises UnaddressableContact.
    """
    from dedup.records import normalize_email

    phone_keys = phone_keys_of(contact, region)
    candidates = [k for k in phone_keys.values() if k] + [normalize_email(e) for e in contact.emails]
    shared = shared_keys(contact.uid, candidates) | set(extra_shared)
    return identifier_for(
        contact,
        is_shared=shared.__contains__,
        phone_e164=phone_keys,
        normalize_email=normalize_email,
        avoid_conversations=frozenset(avoid_conversations),
        uid_addressing=uid_addressing,
    )


def read_indexed_contacts(
    client: PodiumClient, uids: Sequence[str]
) -> Mapping[str, PodiumContact | Unaddressable | None]:
    """Read these indexed contacts back from Podium, one call each.

    The value is the live contact; None when Podium answers 404 (it is gone); ``Unaddressable`` when no
    identifier reaches it alone, or the one that did now reaches another contact (a conversation moved).
    """
    from dedup.dblimits import in_values
    from dedup.models import Contact

    rows = {
        row.uid: row
        for row in Contact.objects.filter(uid__in=in_values(list(uids))).select_related("location")
    }
    out: dict[str, PodiumContact | Unaddressable | None] = {}
    for uid in uids:
        row = rows.get(uid)
        if row is None:
            out[uid] = None
            continue
        try:
            identifier = identifier_of(
                indexed_contact_as_podium(row), row.location.country, uid_addressing=bool(client.capabilities)
            )
        except UnaddressableContact as exc:
            out[uid] = Unaddressable(uid, exc.message)
            continue
        try:
            live = client.get_contact(identifier)
        except NotFoundError:
            out[uid] = None
            continue
        if live.uid != uid:
            out[uid] = Unaddressable(uid, f"its identifier now reaches contact {live.uid}")
            continue
        out[uid] = live
    return out
