"""Shared set-up for the merge, restore and merge-audit tests: an emulator over HTTP, the index, clusters.

Both strategies run against the same tests:

* ``consolidate`` — the emulator serves Podium's published API only and the product declares no
  capability (the default deployment);
* ``native`` — the emulator serves the Part 2 capabilities ``merge,restore,soft-delete`` and the
  product declares them (``settings.PODIUM_CAPABILITIES``).

``merge_env`` is parametrized over both (``strategy`` fixture); ``consolidate_env`` / ``native_env``
pin one. A ``MergeEnv`` starts an empty emulator (the four demo locations), points the product's Podium
settings at it, turns pacing off and shrinks every backoff, so a test builds exactly the contacts and
clusters it is about. ``HookedClient`` is a real ``PodiumClient`` whose calls a test can watch and
intercept, to make something happen in Podium at an exact moment (an edit made in Podium between the
merge call and the write-back, a member deleted just before the merge, an answer lost after commit).
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from django.contrib.auth.models import Group, Permission, User

from dedup.clustering import stable_cluster_id
from dedup.consent import requirements, violations
from dedup.detection import member_records
from dedup.indexing import IndexWriter, prepare_contact
from dedup.merge import common
from dedup.merge.readback import channel_consent
from dedup.models import Cluster, ClusterMember, Contact, Location, LocationGrant, Policy
from dedup.records import OptOuts, normalize_email, tag_key
from dedup.roles import ADMIN, MANAGER, ROLE_PERMISSIONS
from dedup.survivorship import choose_primary
from podium_client import Contact as PodiumContact
from podium_client import Location as PodiumLocation
from podium_client import PodiumClient
from podium_client.consent import consent_flags
from podium_client.corpus import BURLEIGH, SYDNEY
from podium_client.emulator import EmulatorServer, EmulatorState
from tests.audit_guard import lift_for_the_flush
from tests.fixtures_emulator import empty_state, make_contact

CONSOLIDATE = "consolidate"
NATIVE = "native"
#: What the product and the emulator declare for each strategy.
CAPABILITIES: dict[str, tuple[str, ...]] = {CONSOLIDATE: (), NATIVE: ("merge", "restore", "soft-delete")}

FAST_TIMINGS = common.Timings(
    conflict_attempts=3,
    conflict_backoff=0.001,
    conflict_backoff_cap=0.005,
    retry_base=0.01,
    retry_cap=0.05,
    busy_retry=0.01,
)
FAST_CLIENT: dict[str, Any] = {"backoff_base": 0.001, "backoff_cap": 0.01, "max_retries": 3}

_clock = itertools.count(1)


def moment(minutes: int = 0) -> datetime:
    """A distinct, increasing timestamp for test contacts (whole seconds, as Podium's exports have)."""
    return datetime(2026, 3, 1, 9, 0, tzinfo=UTC) + timedelta(minutes=minutes or next(_clock))


# --- a client a test can hook ---------------------------------------------------------------------------

Hook = Callable[..., Any]


class HookedClient(PodiumClient):
    """A real client that records every contact call and lets a test act just before one, or instead.

    ``before[name]`` runs with the call's arguments before it is sent (say, an edit made in Podium
    meanwhile); ``instead[name]`` replaces the call (and may still make it with ``real(name, ...)``);
    ``after`` runs once any call returned. ``calls`` lists ``(name, args)`` in order.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.before: dict[str, Hook] = {}
        self.instead: dict[str, Hook] = {}
        #: Runs with the call's name once it returned (say, to stop the process between two calls).
        self.after: Callable[[str], None] | None = None
        self.calls: list[tuple[str, tuple[Any, ...]]] = []

    def real(self, name: str, *args: Any, **kwargs: Any) -> Any:
        """The un-intercepted call."""
        return getattr(PodiumClient, name)(self, *args, **kwargs)

    def called(self, name: str) -> list[tuple[Any, ...]]:
        """The arguments of every call of that name so far."""
        return [args for n, args in self.calls if n == name]

    def _call(self, name: str, *args: Any, **kwargs: Any) -> Any:
        self.calls.append((name, args))
        hook = self.before.get(name)
        if hook is not None:
            hook(*args)
        instead = self.instead.get(name)
        result = instead(*args, **kwargs) if instead is not None else self.real(name, *args, **kwargs)
        if self.after is not None:
            self.after(name)
        return result

    def get_contact(self, identifier: str) -> PodiumContact:
        result: PodiumContact = self._call("get_contact", identifier)
        return result

    def update_contact(self, identifier: str, fields: Any) -> str | None:
        result: str | None = self._call("update_contact", identifier, dict(fields))
        return result

    def delete_contact(self, identifier: str) -> None:
        self._call("delete_contact", identifier)

    def create_contact(self, name: str, location_uids: Sequence[str], **kwargs: Any) -> str | None:
        result: str | None = self._call("create_contact", name, list(location_uids), **kwargs)
        return result

    def attach_tag(self, identifier: str, tag_uid: str) -> None:
        self._call("attach_tag", identifier, tag_uid)

    def set_attribute(
        self, identifier: str, attribute_uid: str, value: str, *, existing: bool = False
    ) -> None:
        self._call("set_attribute", identifier, attribute_uid, value, existing=existing)

    def opt_out_phone(self, phone_e164: str) -> PodiumContact | None:
        result: PodiumContact | None = self._call("opt_out_phone", phone_e164)
        return result

    def merge(self, primary_uid: str, duplicate_uids: Sequence[str]) -> PodiumContact:
        result: PodiumContact = self._call("merge", primary_uid, list(duplicate_uids))
        return result

    def restore_contact(self, uid: str) -> PodiumContact:
        result: PodiumContact = self._call("restore_contact", uid)
        return result


# --- the environment -------------------------------------------------------------------------------------


@dataclass
class MergeEnv:
    """An emulator the product talks to, the index built from it, helpers to make contacts and clusters."""

    server: EmulatorServer
    strategy: str
    clients: list[PodiumClient] = field(default_factory=list)

    @property
    def state(self) -> EmulatorState:
        return self.server.state

    @property
    def native(self) -> bool:
        return self.strategy == NATIVE

    @property
    def capabilities(self) -> tuple[str, ...]:
        return CAPABILITIES[self.strategy]

    def client(self, **kwargs: Any) -> HookedClient:
        """A hooked client for this emulator (the strategy's capabilities, tiny backoff)."""
        options: dict[str, Any] = {"timeout": 5, **FAST_CLIENT, "capabilities": self.capabilities, **kwargs}
        client = HookedClient(self.server.url, access_token=self.server.token, **options)
        self.clients.append(client)
        return client

    def add(self, uid: str | None = None, **kwargs: Any) -> str:
        """Create a contact in the emulator (``make_contact`` arguments); returns its uid."""
        kwargs.setdefault("updated_at", moment())
        return str(self.state.add_contact(make_contact(uid=uid, **kwargs))["uid"])

    def live(self, uid: str) -> PodiumContact | None:
        """The contact as the emulator holds it now (hidden ones included); None once a DELETE removed it."""
        try:
            return PodiumContact.from_wire(self.state.get(uid))
        except KeyError:
            return None

    def alive(self, uid: str) -> PodiumContact:
        """The contact, which must be live (neither deleted nor hidden)."""
        contact = self.live(uid)
        assert contact is not None and not contact.is_hidden, f"{uid} is not live: {contact}"
        return contact

    def retired(self, uid: str) -> bool:
        """True when the contact is gone from Podium's listings (deleted, hidden or merged away)."""
        contact = self.live(uid)
        return contact is None or contact.is_hidden

    def deleted(self) -> dict[str, PodiumContact]:
        """Every contact a DELETE removed or hid, as it was just before (the emulator's record)."""
        return {d["uid"]: PodiumContact.from_wire(d["contact"]) for d in self.state.deleted()}

    def edit(self, uid: str, **changes: Any) -> PodiumContact:
        """An edit made by a person in Podium itself (the emulator's ``podium_edit``)."""
        return PodiumContact.from_wire(self.state.podium_edit(uid, changes))

    def stats(self) -> dict[str, Any]:
        return self.server.stats()

    def index(self, uids: Iterable[str] | None = None) -> None:
        """Index the emulator's live contacts (all, or the given ones) as a scan would."""
        writer = IndexWriter(Policy.current().default_region)
        writer.ensure_locations(PodiumLocation.from_wire(loc) for loc in self.state.locations())
        wanted = set(uids) if uids is not None else None
        contacts = [PodiumContact.from_wire(c) for c in self.state.contacts()]
        writer.write(
            [
                prepare_contact(c, writer.region_for(c.location_uid or ""))
                for c in contacts
                if wanted is None or c.uid in wanted
            ]
        )

    def cluster(self, uids: Sequence[str], *, auto: bool = True, kind: str | None = None) -> Cluster:
        """A proposed cluster of indexed contacts (auto-mergeable unless ``auto=False``)."""
        contacts = list(Contact.objects.filter(uid__in=uids).select_related("location"))
        assert len(contacts) == len(uids), "index the contacts first"
        locations = {loc for c in contacts for loc in c.all_location_uids}
        cross = len({c.location_id for c in contacts}) > 1
        keys = sorted({k for c in contacts for k in c.keys.values_list("key", flat=True)})
        cluster, _ = Cluster.objects.update_or_create(
            cluster_id=stable_cluster_id(list(uids), cross),
            defaults={
                "natural_keys": keys,
                "location": None if cross else contacts[0].location,
                "cross_location": cross,
                "kind": kind or (Cluster.CROSS if cross else (Cluster.AUTO if auto else Cluster.REVIEW)),
                "auto_merge": auto,
                "reasons": ["auto_merge_eligible"] if auto else ["below_threshold"],
                "member_count": len(contacts),
                "status": Cluster.OPEN,
                "decided_by": None,
                "decided_at": None,
                "chosen_primary_uid": "",
            },
        )
        cluster.locations.set(Location.objects.filter(uid__in=locations))
        ClusterMember.objects.filter(cluster=cluster).delete()
        for c in contacts:
            ClusterMember.objects.create(
                cluster=cluster, contact=c, location=c.location, updated_at_when_scored=c.updated_at
            )
        cluster.suggested_primary_uid = choose_primary(list(member_records(cluster))).uid
        cluster.save()
        return cluster

    def maria(self, prefix: str = "ct_m", number: str = "412345678") -> list[str]:
        """Three spellings of one customer, data and consent spread over them, nothing that cannot be
        carried by either strategy; returns their uids (``{prefix}1`` is the primary by the rule).

        ``{prefix}1``: name, phone, tag ``vip``, attribute ``birthday``, address (the richest).
        ``{prefix}2``: the same number in E.164, the only email, tag ``Newsletter``.
        ``{prefix}3``: the number typed another way, attribute ``loyalty``, *not* opted in for marketing
        (so the survivor's number must be opted out of marketing), and two conversations.
        ``number`` is the mobile's nine digits after the leading 0 (tests making several Marias vary it).
        """
        n = number
        self.add(
            f"{prefix}1", name="Maria Garcia", phones=[f"0{n[:3]} {n[3:6]} {n[6:]}"], tags=["vip"],
            attributes=[("birthday", "1990-01-01")], address="1 George St",
        )  # fmt: skip
        self.add(
            f"{prefix}2", name="maria garcia", phones=[f"+61{n}"], emails=[f"maria.{n}@example.com"],
            tags=["Newsletter"],
        )  # fmt: skip
        self.add(
            f"{prefix}3", name="Garcia, Maria", phones=[f"(0{n[0]}) {n[1:5]}-{n[5:]}"], attributes=[("loyalty", "gold")],
            marketing_opted_in=False, conversations=2,
        )  # fmt: skip
        return [f"{prefix}1", f"{prefix}2", f"{prefix}3"]

    def pair(self, prefix: str = "ct_p", *, number: str = "0411 111 111", **dup: Any) -> list[str]:
        """A primary and one duplicate with the same number; ``dup`` adds ``make_contact`` arguments to
        the duplicate. The primary is the richer (a tag and an address)."""
        self.add(f"{prefix}1", name="Sam Lee", phones=[number], tags=["regular"], address="2 Pitt St")
        dup.setdefault("name", "Sam Lee")
        dup.setdefault("phones", ["+61" + number.replace(" ", "")[1:]])
        self.add(f"{prefix}2", **dup)
        return [f"{prefix}1", f"{prefix}2"]


# --- what "nothing lost" means ----------------------------------------------------------------------------


def phone_keys(contact: PodiumContact, region: str = "AU") -> set[str]:
    """The contact's numbers as E.164 (or their digits when not a valid number)."""
    from dedup.phones import normalize_phone

    out = set()
    for phone in contact.phones:
        result = normalize_phone(phone, region)
        out.add(
            result.e164
            if result.valid and result.e164
            else "raw:" + "".join(ch for ch in phone if ch.isdigit())
        )
    return out


def emails(contact: PodiumContact) -> set[str]:
    """The contact's emails, normalized, without retirement handles."""
    return {normalize_email(e) for e in contact.emails if not e.endswith("@dedup-retire.invalid")}


def tags(contact: PodiumContact) -> set[str]:
    return {tag_key(t.label) for t in contact.tags}


def attributes(contact: PodiumContact) -> dict[str, str]:
    return {tag_key(a.label): a.text for a in contact.attributes if a.text.strip()}


def missing_on(survivor: PodiumContact, member: PodiumContact, region: str = "AU") -> list[str]:
    """What ``member`` held that ``survivor`` does not (field:value), besides accepted losses."""
    missing = [f"phone:{p}" for p in sorted(phone_keys(member, region) - phone_keys(survivor, region))]
    missing += [f"email:{e}" for e in sorted(emails(member) - emails(survivor))]
    missing += [f"tag:{t}" for t in sorted(tags(member) - tags(survivor))]
    held = attributes(survivor)
    missing += [f"attribute:{label}" for label in sorted(attributes(member)) if label not in held]
    missing += [f"conversation:{c}" for c in member.conversation_uids if c not in survivor.conversation_uids]
    missing += [f"location:{loc}" for loc in member.location_uids if loc not in survivor.location_uids]
    if member.address is not None and survivor.address is None:
        missing.append("address")
    if (member.name or "").strip() and not (survivor.name or "").strip():
        missing.append("name")
    return missing


def consent_problems(
    members: Iterable[PodiumContact], survivor: PodiumContact, region: str = "AU"
) -> list[str]:
    """How the survivor's consent is weaker than the strictest member per number and address (Podium's
    per-channel model; empty when the compliance invariant holds)."""
    required = requirements({m.uid: channel_consent(m, region) for m in members})
    return violations(required, channel_consent(survivor, region))


def flags(contact: PodiumContact) -> OptOuts:
    """The product's three flags of a contact, derived from its channels."""
    derived = consent_flags(contact)
    return OptOuts(derived.marketing_opt_out, derived.sms_opt_out, derived.email_opt_out)


def union_of_flags(contacts: Iterable[PodiumContact]) -> OptOuts:
    return OptOuts.union_all(flags(c) for c in contacts)


# --- fixtures ---------------------------------------------------------------------------------------------


@pytest.fixture
def merge_env_factory(
    emulator_factory: Callable[..., EmulatorServer], settings: Any, monkeypatch: pytest.MonkeyPatch, db: None
) -> Iterator[Callable[..., MergeEnv]]:
    """``make(strategy=CONSOLIDATE, state=None, **server_kwargs)``: an emulator the product talks to.

    The product's settings and the emulator declare the strategy's capabilities; no pacing, tiny
    backoffs. Without ``state`` the emulator starts empty (the four demo locations only).
    """
    envs: list[MergeEnv] = []
    monkeypatch.setattr(common, "CLIENT_OPTIONS", dict(FAST_CLIENT))
    # The rooms import the one TIMINGS object by name: shrink it in place.
    for name, value in dataclasses.asdict(FAST_TIMINGS).items():
        monkeypatch.setattr(common.TIMINGS, name, value)

    def make(
        strategy: str = CONSOLIDATE, state: EmulatorState | None = None, **server_kwargs: Any
    ) -> MergeEnv:
        caps = CAPABILITIES[strategy]
        server = emulator_factory(
            state if state is not None else empty_state(), capabilities=caps, **server_kwargs
        )
        settings.PODIUM_BASE_URL = server.url
        settings.PODIUM_ACCESS_TOKEN = server.token
        settings.PODIUM_REFRESH_TOKEN = ""
        settings.PODIUM_CAPABILITIES = list(caps)
        policy = Policy.current()
        policy.rate_limit_per_minute = 0
        policy.save()
        env = MergeEnv(server, strategy)
        envs.append(env)
        return env

    yield make
    for env in envs:
        for client in env.clients:
            client.close()


@pytest.fixture(params=[CONSOLIDATE, NATIVE])
def strategy(request: pytest.FixtureRequest) -> str:
    """Each strategy in turn: the published API only, then Podium's merge capability."""
    return str(request.param)


@pytest.fixture
def merge_env(merge_env_factory: Callable[..., MergeEnv], strategy: str) -> MergeEnv:
    """An empty emulator the product talks to, for each strategy in turn."""
    return merge_env_factory(strategy)


@pytest.fixture
def consolidate_env(merge_env_factory: Callable[..., MergeEnv]) -> MergeEnv:
    """The published API only."""
    return merge_env_factory(CONSOLIDATE)


@pytest.fixture
def native_env(merge_env_factory: Callable[..., MergeEnv]) -> MergeEnv:
    """Podium's merge, restore and soft-delete capabilities."""
    return merge_env_factory(NATIVE)


@pytest.fixture
def pg_flushable(transactional_db: None) -> Iterator[None]:
    """Let pytest-django flush PostgreSQL after a ``transaction=True`` test despite the audit guard.

    Migration 0002 refuses TRUNCATE of audit events, which is how the test database is emptied after a
    transactional test. The guard is switched off just for that flush and back on right after it
    (flush emits ``post_migrate``), so every other test still runs with it.
    """
    yield
    lift_for_the_flush()




@pytest.fixture
def rescans(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """Every rescan the product queues (the real ``queue_rescan_of_keys`` still runs)."""
    from dedup import scanning

    calls: list[dict[str, Any]] = []
    real = scanning.queue_rescan_of_keys

    def spy(natural_keys: Any, reason: str, **kwargs: Any) -> Any:
        calls.append({"keys": list(natural_keys), "reason": reason, **kwargs})
        return real(natural_keys, reason, **kwargs)

    monkeypatch.setattr(scanning, "queue_rescan_of_keys", spy)
    return calls


def _person(username: str, role: str) -> User:
    user = User.objects.create_user(
        username, password="x", is_staff=role == ADMIN, is_superuser=role == ADMIN
    )
    group, created = Group.objects.get_or_create(name=role)
    if created:
        # A flushed database (after a transactional test) lost what the roles migration made.
        for dotted in ROLE_PERMISSIONS[role]:
            app_label, codename = dotted.split(".")
            group.permissions.add(
                Permission.objects.get(content_type__app_label=app_label, codename=codename)
            )
    user.groups.add(group)
    return user


def grant_every_location(user: User) -> None:
    """Let a manager act on every location indexed so far (managers act only where they are granted)."""
    for location in Location.objects.all():
        LocationGrant.objects.get_or_create(user=user, location=location)


@pytest.fixture
def manager(db: None) -> User:
    """A signed-in person who approves and rejects clusters."""
    return _person("alice", MANAGER)


@pytest.fixture
def admin_user(db: None) -> User:
    """A person who restores contacts and resolves merges."""
    return _person("root", ADMIN)


__all__ = [
    "BURLEIGH",
    "CAPABILITIES",
    "CONSOLIDATE",
    "NATIVE",
    "SYDNEY",
    "HookedClient",
    "MergeEnv",
    "attributes",
    "consent_problems",
    "emails",
    "flags",
    "grant_every_location",
    "missing_on",
    "moment",
    "phone_keys",
    "tags",
    "union_of_flags",
]
