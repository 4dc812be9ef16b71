"""The shared base of the dashboard tests: named people, the demo locations, clusters built in the v4 index.

The people (as in the style guide): ``sydney_manager`` manages Sydney CBD, ``burleigh_manager`` manages
Burleigh Heads, ``auditor`` reads everything and changes nothing, ``admin`` sees and does everything. The
locations are the demo organization's (``podium_client.corpus``: their v4 uids, Podium's country). Every
view's tests check: the manager of the location may; the manager of another location gets 404; the
auditor gets 403 on every POST; anonymous is sent to sign in; a POST without a CSRF token is refused.

Contacts are Podium's published v4 objects (``tests.fixtures_emulator.make_contact`` dicts, consent per
channel). Clusters are built without Podium: the contacts go through the real wire mapping
(``Contact.from_wire``) and indexer (``prepare_contact`` + ``IndexWriter``), are read back as detection
reads them (``load_member_records``) and scored by the real rules; the cluster row is what detection
writes for such a group. Tests whose views call Podium load the same dicts into an emulator serving the
published API only (``PodiumMixin``).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from django.contrib.auth.models import Group, Permission, User
from django.test import Client, TestCase

from dedup.clustering import stable_cluster_id
from dedup.detection import load_member_records
from dedup.indexing import IndexWriter, PreparedContact, prepare_contact
from dedup.models import Cluster, ClusterMember, Contact, Location, LocationGrant, MergeOperation, Policy
from dedup.roles import ROLE_NAMES, ROLE_PERMISSIONS
from dedup.scoring import assess_cluster
from dedup.survivorship import choose_primary
from podium_client import Contact as PodiumContact
from podium_client import Location as PodiumLocation
from podium_client.consent import consent_flags
from podium_client.corpus import AUCKLAND, BURLEIGH, LOCATIONS, POPUP, SYDNEY
from tests.fixtures_emulator import empty_state, make_contact

__all__ = [
    "AUCKLAND",
    "BURLEIGH",
    "PASSWORD",
    "POPUP",
    "SYDNEY",
    "DashboardTestCase",
    "PodiumMixin",
    "build_cluster",
    "ensure_locations",
    "flags_of",
    "household",
    "index_contacts",
    "make_operation",
    "make_user",
    "person",
    "same_person",
]

PASSWORD = "correct-horse-battery-staple"
_WHEN = datetime(2025, 3, 1, 9, 0, tzinfo=UTC)
_LOCATION_BY_UID = {loc["uid"]: loc for loc in LOCATIONS}


def ensure_role_groups() -> None:
    """Create the role groups if a flushed database (a live-server test) lost what the migration made."""
    for role, perms in ROLE_PERMISSIONS.items():
        group, created = Group.objects.get_or_create(name=role)
        if not created and group.permissions.exists():
            continue
        for dotted in perms:
            app_label, codename = dotted.split(".")
            group.permissions.add(Permission.objects.get(content_type__app_label=app_label, codename=codename))


def ensure_locations(*uids: str) -> list[Location]:
    """The demo organization's locations as a scan records them (name, Podium's country, the region)."""
    writer = IndexWriter(Policy.current().default_region, method="orm")
    saved = {loc.uid: loc for loc in writer.ensure_locations(PodiumLocation.from_wire(_LOCATION_BY_UID[u]) for u in uids)}
    return [saved[u] for u in uids]


def make_user(username: str, role: str, locations: Iterable[Location] = ()) -> User:
    user = User.objects.create_user(username=username, password=PASSWORD, is_staff=role == "admin")
    user.groups.add(Group.objects.get(name=ROLE_NAMES[role]))
    for loc in locations:
        LocationGrant.objects.create(user=user, location=loc)
    return user


def person(
    uid: str,
    locations: str | Sequence[str] = SYDNEY,
    name: str | None = "Maria Garcia",
    *,
    phones: Sequence[str] = (),
    emails: Sequence[str] = (),
    tags: Sequence[str] = (),
    attributes: Sequence[tuple[str, str | None]] = (),
    address: dict[str, Any] | str | None = None,
    conversations: int | Sequence[str] = 1,
    marketing_opt_out: str | bool = False,
    transactional_opt_out: str | bool = False,
    when: datetime = _WHEN,
) -> dict[str, Any]:
    """A v4 contact dict (as ``GET /v4/contacts`` lists it) with consent said the product's way.

    Its conversations get uids derived from its own (the same on every call). Every channel is opted in
    for marketing at the contact's locations, except: ``marketing_opt_out``
    True (every channel) or ``"PHONE"`` / ``"EMAIL"`` (channels of that type) opted in nowhere.
    ``transactional_opt_out``: True or a channel type, as ``make_contact`` takes it.
    """
    locs = [locations] if isinstance(locations, str) else list(locations)
    if isinstance(conversations, int):
        # Derived from the contact's uid, so the index and an emulator loaded later hold the same ones.
        conversations = [str(uuid.uuid5(uuid.NAMESPACE_URL, f"conversation/{uid}/{n}")) for n in range(conversations)]
    contact = make_contact(
        uid, locs, name, phones=phones, emails=emails, tags=tags, attributes=attributes, address=address,
        conversations=conversations, transactional_opt_out=transactional_opt_out, created_at=when, updated_at=when,
    )  # fmt: skip
    for channel in contact["channels"]:
        if marketing_opt_out is True or marketing_opt_out == channel["type"]:
            channel["marketingOptedInLocationUids"] = []
    return contact


def flags_of(contact: Mapping[str, Any]) -> dict[str, bool]:
    """The product's three opt-out flags of a v4 contact dict (as the emulator serves it)."""
    return consent_flags(PodiumContact.from_wire(dict(contact))).to_wire()


def index_contacts(contacts: Sequence[Mapping[str, Any]]) -> list[PreparedContact]:
    """Write v4 contact dicts into the contact index with the real wire mapping and indexer."""
    writer = IndexWriter(Policy.current().default_region, method="orm")
    wire = [PodiumContact.from_wire(dict(c)) for c in contacts]
    prepared = [prepare_contact(c, writer.region_for(c.location_uid or "")) for c in wire]
    writer.write(prepared)
    return prepared


def build_cluster(contacts: Sequence[Mapping[str, Any]], *, status: str = Cluster.OPEN) -> Cluster:
    """Index ``contacts`` and propose them as one cluster, as detection would (``dedup.detect.proposals.propose``).

    A group whose members share a location is a within-location cluster of that location (the first
    shared one, by uid); otherwise it is cross-location. The cluster's locations are every location of
    every member.
    """
    prepared = index_contacts(contacts)
    uids = [p.uid for p in prepared]
    by_uid = {c.uid: c for c in Contact.objects.filter(uid__in=uids)}
    records = list(load_member_records([by_uid[u].pk for u in uids]).values())
    policy = Policy.current()
    assessment = assess_cluster(
        records,
        threshold=policy.auto_merge_threshold,
        allow_cross_location_auto=policy.cross_location_auto_merge,
        use_email_key=policy.email_secondary_key,
    )
    common = sorted(set.intersection(*(set(r.location_uids) for r in records)))
    cross = not common
    kind = Cluster.CROSS if cross else (Cluster.AUTO if assessment.auto_merge else Cluster.REVIEW)
    every_location = sorted({loc for r in records for loc in r.location_uids})
    locations = {loc.uid: loc for loc in Location.objects.filter(uid__in=every_location)}
    key_counts: dict[str, int] = {}
    for p in prepared:
        for k in p.keys:
            if k.kind == "PHONE":
                key_counts[k.key] = key_counts.get(k.key, 0) + 1
    cluster = Cluster.objects.create(
        cluster_id=stable_cluster_id(uids, cross),
        natural_keys=sorted(k for k, n in key_counts.items() if n > 1),
        location=None if cross else locations[common[0]],
        cross_location=cross,
        kind=kind,
        confidence=Decimal(f"{assessment.confidence:.2f}"),
        auto_merge=assessment.auto_merge,
        status=status,
        reasons=list(assessment.reasons),
        # The shape detection stores (dedup.detection), with the explanation the review page shows.
        pair_scores=[
            {"a": p.uid_a, "b": p.uid_b, "score": p.score, "reasons": list(p.reasons), "conflict": p.conflict,
             "explanation": p.explain()}
            for _key, p in sorted(assessment.pairs.items())
        ],
        member_count=len(uids),
        suggested_primary_uid=choose_primary(records).uid,
    )
    cluster.locations.set(locations.values())
    ClusterMember.objects.bulk_create(
        ClusterMember(
            cluster=cluster,
            contact=by_uid[uid],
            location_id=by_uid[uid].location_id,
            updated_at_when_scored=by_uid[uid].updated_at,
        )
        for uid in uids
    )
    return cluster


def same_person(
    location_uid: str = SYDNEY, prefix: str = "ct_100", *, name: str = "Maria Garcia", opt_outs: bool = True
) -> list[dict[str, Any]]:
    """Three spellings of one customer's phone: an auto-mergeable cluster the published API can merge.

    The first contact is the richest (the primary by the rule: address, a birthday attribute) and its
    phone opted out of transactional messages (SMS); the second's phone is not opted in for marketing
    (Marketing), which the merge withdraws from the primary with ``campaigns/opt_out``; the third is
    plain. ``opt_outs=False`` gives all three full consent.
    """
    return [
        person(f"{prefix}0001_aaaaaa", location_uid, name, phones=["+61 412 345 678"], emails=["maria@example.com"],
               tags=["VIP"], attributes=[("Birthday", "03-14")], address="1 George St, Sydney",
               transactional_opt_out="PHONE" if opt_outs else False),
        person(f"{prefix}0002_bbbbbb", location_uid, name, phones=["0412 345 678"], emails=["maria@example.com"],
               tags=["vip", "Birthday March"], marketing_opt_out="PHONE" if opt_outs else False),
        person(f"{prefix}0003_cccccc", location_uid, name, phones=["(04) 1234-5678"], emails=["maria@example.com"],
               tags=["VIP"]),
    ]  # fmt: skip


def household(location_uid: str = SYDNEY, prefix: str = "ct_200") -> list[dict[str, Any]]:
    """Two people sharing a landline: different names, so a review cluster with a conflict."""
    return [
        person(f"{prefix}0001_aaaaaa", location_uid, "Wei Chen", phones=["02 9374 4000"],
               emails=["chen.family@example.com"]),
        person(f"{prefix}0002_bbbbbb", location_uid, "Li Chen", phones=["(02) 9374-4000"],
               emails=["chen.family@example.com"]),
    ]  # fmt: skip


class DashboardTestCase(TestCase):
    """Named people, Sydney and Burleigh Heads, and an auto cluster in each location."""

    sydney: Location
    burleigh: Location
    sydney_manager: User
    burleigh_manager: User
    auditor: User
    admin: User
    sydney_cluster: Cluster
    burleigh_cluster: Cluster

    @classmethod
    def setUpTestData(cls) -> None:
        ensure_role_groups()
        cls.sydney, cls.burleigh = ensure_locations(SYDNEY, BURLEIGH)
        cls.sydney_manager = make_user("sydney_manager", "manager", [cls.sydney])
        cls.burleigh_manager = make_user("burleigh_manager", "manager", [cls.burleigh])
        cls.auditor = make_user("auditor", "auditor")
        cls.admin = make_user("admin", "admin")
        cls.sydney_cluster = build_cluster(same_person(SYDNEY, "ct_100"))
        cls.burleigh_cluster = build_cluster(same_person(BURLEIGH, "ct_300", name="Jack Smith"))

    def login(self, user: User) -> None:
        self.client.force_login(user)

    def csrf_client(self, user: User) -> Client:
        """A client that enforces CSRF like a browser would, signed in as ``user``."""
        client = Client(enforce_csrf_checks=True)
        client.force_login(user)
        return client

    def assert_login_redirect(self, response: Any, path: str) -> None:
        assert response.status_code == 302, response.status_code
        assert response["Location"].startswith("/accounts/login/?next="), response["Location"]


class PodiumMixin:
    """For TestCase classes whose views call Podium: an emulator holding ``podium_contacts``.

    The emulator runs per test, serving the published API only (no capabilities), its state the demo
    locations and these contacts; Django is pointed at it and the policy's request budget is raised so
    pacing does not slow the tests.
    """

    podium_contacts: list[dict[str, Any]] = []

    @pytest.fixture(autouse=True)
    def _podium_emulator(self, emulator_factory: Any, settings: Any) -> None:
        state = empty_state()
        for contact in self.podium_contacts:
            state.add_contact(contact)
        self.emulator = emulator_factory(state)
        settings.PODIUM_BASE_URL = self.emulator.url
        settings.PODIUM_ACCESS_TOKEN = self.emulator.token
        settings.PODIUM_CAPABILITIES = []
        Policy.objects.filter(pk=Policy.current().pk).update(rate_limit_per_minute=60_000)


def make_operation(cluster: Cluster, state: str, **fields: Any) -> MergeOperation:
    """A merge operation row for ``cluster`` in ``state``, with the plan an approval would commit."""
    from dedup.merge.planning import member_records, plan_for

    plan = plan_for(cluster, member_records(cluster), strategy=MergeOperation.CONSOLIDATE)
    defaults: dict[str, Any] = {
        "cluster": cluster,
        "state": state,
        "strategy": MergeOperation.CONSOLIDATE,
        "primary_uid": plan.primary_uid,
        "duplicate_uids": list(plan.duplicate_uids),
        "plan": plan.to_dict(),
        "accepted_losses": [loss.to_dict() for loss in plan.losses],
        "member_snapshot": {
            uid: {"updatedAt": None, "optOuts": flags.to_wire()} for uid, flags in plan.member_opt_outs.items()
        },
    }
    defaults.update(fields)
    return MergeOperation.objects.create(**defaults)
