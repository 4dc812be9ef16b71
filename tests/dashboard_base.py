"""The shared base of the dashboard tests: named people, two locations, clusters built straight in the index.

The people (as in the style guide): ``sydney_manager`` manages Sydney (``loc_sydney``), ``burleigh_manager``
manages Burleigh Heads (``loc_burleigh``), ``auditor`` reads everything and changes nothing, ``admin`` sees and
does everything. Every view's tests check: the manager of the location may; the manager of another location
gets 404; the auditor gets 403 on every POST; anonymous is sent to sign in; a POST without a CSRF token is
refused.

Clusters are built without Podium: the contacts go through the real indexer (``prepare_contact`` +
``IndexWriter``) and are scored by the real scoring rules. Tests that approve or restore also load the
same contacts into an emulator (``PodiumMixin``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from django.contrib.auth.models import Group, Permission, User
from django.test import Client, TestCase

from dedup.clustering import stable_cluster_id
from dedup.indexing import IndexWriter, PreparedContact, prepare_contact
from dedup.models import Cluster, ClusterMember, Contact, Location, LocationGrant, Policy
from dedup.records import MemberRecord
from dedup.roles import ROLE_NAMES, ROLE_PERMISSIONS
from dedup.scoring import assess_cluster
from dedup.survivorship import choose_primary
from podium_client import Contact as PodiumContact
from tests.fixtures_emulator import empty_state, make_contact

PASSWORD = "correct-horse-battery-staple"
SYDNEY = "loc_sydney"
BURLEIGH = "loc_burleigh"


def ensure_role_groups() -> None:
    """Create the role groups if a flushed database (a live-server test) lost what the migration made."""
    for role, perms in ROLE_PERMISSIONS.items():
        group, created = Group.objects.get_or_create(name=role)
        if not created and group.permissions.exists():
            continue
        for dotted in perms:
            app_label, codename = dotted.split(".")
            group.permissions.add(Permission.objects.get(content_type__app_label=app_label, codename=codename))


def make_user(username: str, role: str, locations: Iterable[Location] = ()) -> User:
    user = User.objects.create_user(username=username, password=PASSWORD, is_staff=role == "admin")
    user.groups.add(Group.objects.get(name=ROLE_NAMES[role]))
    for loc in locations:
        LocationGrant.objects.create(user=user, location=loc)
    return user


def index_contacts(contacts: Sequence[PodiumContact]) -> list[PreparedContact]:
    """Write Podium-shaped contacts into the contact index with the real indexer."""
    writer = IndexWriter(Policy.current().default_region, method="orm")
    prepared = [prepare_contact(c, writer.region_for(c.location_uid)) for c in contacts]
    writer.write(prepared)
    return prepared


def record_of(p: PreparedContact) -> MemberRecord:
    """The domain record of an indexed contact (what detection builds from the index)."""
    keys = {k.raw: k.key for k in p.keys if k.kind == "PHONE"}
    phones = [c["identifier"] for c in p.channels if c["type"] == "PHONE"]
    emails = [c["identifier"] for c in p.channels if c["type"] == "EMAIL"]
    return MemberRecord.build(
        uid=p.uid,
        location_uid=p.location_uid,
        updated_at=p.updated_at,
        name=p.name,
        phone_channels=[(raw, keys.get(raw)) for raw in phones],
        raw_emails=emails,
        tags=p.tags,
        attributes=[(str(a["label"]), str(a["value"] or "")) for a in p.attributes],
        address=p.address,
        marketing_opt_out=p.marketing_opt_out,
        sms_opt_out=p.sms_opt_out,
        email_opt_out=p.email_opt_out,
        field_count=p.field_count,
    )


def build_cluster(contacts: Sequence[PodiumContact], *, status: str = Cluster.OPEN) -> Cluster:
    """Index ``contacts`` and propose them as one cluster, scored by the real rules."""
    prepared = index_contacts(contacts)
    records = [record_of(p) for p in prepared]
    policy = Policy.current()
    assessment = assess_cluster(
        records,
        threshold=policy.auto_merge_threshold,
        allow_cross_location_auto=policy.cross_location_auto_merge,
    )
    location_uids = sorted({c.location_uid for c in contacts})
    cross = len(location_uids) > 1
    locations = list(Location.objects.filter(uid__in=location_uids))
    if cross:
        kind = Cluster.CROSS
    else:
        kind = Cluster.AUTO if assessment.auto_merge else Cluster.REVIEW
    key_counts: dict[str, int] = {}
    for p in prepared:
        for k in p.keys:
            if k.kind == "PHONE":
                key_counts[k.key] = key_counts.get(k.key, 0) + 1
    uids = [p.uid for p in prepared]
    cluster = Cluster.objects.create(
        cluster_id=stable_cluster_id(uids, cross),
        natural_keys=sorted(k for k, n in key_counts.items() if n > 1),
        location=None if cross else locations[0],
        cross_location=cross,
        kind=kind,
        confidence=Decimal(f"{assessment.confidence:.2f}"),
        auto_merge=assessment.auto_merge,
        status=status,
        reasons=list(assessment.reasons),
        # The shape detection stores (dedup.detection), without the per-evidence weights.
        pair_scores=[
            {"a": p.uid_a, "b": p.uid_b, "score": p.score, "reasons": list(p.reasons), "conflict": p.conflict,
             "explanation": p.explain()}
            for _key, p in sorted(assessment.pairs.items())
        ],
        member_count=len(uids),
        suggested_primary_uid=choose_primary(records).uid,
    )
    cluster.locations.set(locations)
    by_uid = {c.uid: c for c in Contact.objects.filter(uid__in=uids)}
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


_WHEN = datetime(2025, 3, 1, 9, 0, tzinfo=UTC)


def same_person(location_uid: str = SYDNEY, prefix: str = "ct_100", *, opt_out_on_duplicate: bool = True,
                name: str = "Maria Garcia") -> list[PodiumContact]:
    """Three spellings of one customer's phone: an auto-mergeable cluster (one duplicate opted out)."""
    return [
        make_contact(f"{prefix}0001_aaaaaa", location_uid, name, phones=["+61 412 345 678"],
                     emails=["maria@example.com"], tags=["VIP"], address="1 George St, Sydney",
                     created_at=_WHEN, updated_at=_WHEN),
        make_contact(f"{prefix}0002_bbbbbb", location_uid, name, phones=["0412 345 678"],
                     emails=["maria@example.com"], tags=["vip", "Birthday March"],
                     marketing_opt_out=opt_out_on_duplicate, created_at=_WHEN, updated_at=_WHEN),
        make_contact(f"{prefix}0003_cccccc", location_uid, name, phones=["(04) 1234-5678"],
                     emails=["maria@example.com"], tags=["VIP"], sms_opt_out=opt_out_on_duplicate,
                     created_at=_WHEN, updated_at=_WHEN),
    ]


def household(location_uid: str = SYDNEY, prefix: str = "ct_200") -> list[PodiumContact]:
    """Two people sharing a landline: different names, so a review cluster with a conflict."""
    return [
        make_contact(f"{prefix}0001_aaaaaa", location_uid, "Wei Chen", phones=["02 9374 4000"],
                     emails=["chen.family@example.com"], created_at=_WHEN, updated_at=_WHEN),
        make_contact(f"{prefix}0002_bbbbbb", location_uid, "Li Chen", phones=["(02) 9374-4000"],
                     emails=["chen.family@example.com"], created_at=_WHEN, updated_at=_WHEN),
    ]


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
        cls.sydney = Location.objects.create(uid=SYDNEY, name="Sydney CBD", country="AU")
        cls.burleigh = Location.objects.create(uid=BURLEIGH, name="Burleigh Heads", country="AU")
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

    The emulator runs per test (its state starts empty with the demo locations); Django is pointed at it
    and the policy's request budget is raised so pacing does not slow the tests.
    """

    podium_contacts: list[PodiumContact] = []

    @pytest.fixture(autouse=True)
    def _podium_emulator(self, emulator_factory: Any, settings: Any) -> None:
        state = empty_state()
        for contact in self.podium_contacts:
            state.add_contact(contact)
        self.emulator = emulator_factory(state)
        settings.PODIUM_BASE_URL = self.emulator.url
        settings.PODIUM_ACCESS_TOKEN = self.emulator.token
        Policy.objects.filter(pk=Policy.current().pk).update(rate_limit_per_minute=60_000)


def make_operation(cluster: Cluster, state: str, **fields: Any) -> Any:
    """A merge operation row for ``cluster`` in ``state``, with the plan the rules would make."""
    from dedup.models import MergeOperation
    from dedup.survivorship import plan_merge

    contacts = Contact.objects.filter(memberships__cluster=cluster)
    records = [record_of(_prepared_from_row(c)) for c in contacts]
    plan = plan_merge(records)
    defaults: dict[str, Any] = {
        "cluster": cluster,
        "state": state,
        "primary_uid": plan.primary_uid,
        "duplicate_uids": list(plan.duplicate_uids),
        "plan": plan.to_dict(),
    }
    defaults.update(fields)
    return MergeOperation.objects.create(**defaults)


def _prepared_from_row(contact: Contact) -> PreparedContact:
    # Re-prepare an indexed contact from its stored channels (enough for planning in tests).
    from podium_client import Attribute, Channel
    from podium_client import Contact as Wire

    wire = Wire(
        uid=contact.uid,
        location_uid=contact.location.uid,
        name=contact.name,
        channels=tuple(Channel(c["type"], c["identifier"]) for c in contact.channels),
        tags=tuple(contact.tags),
        attributes=tuple(Attribute(a["label"], a.get("value")) for a in contact.attributes),
        address=contact.address,
        marketing_opt_out=contact.marketing_opt_out,
        sms_opt_out=contact.sms_opt_out,
        email_opt_out=contact.email_opt_out,
        created_at=contact.created_at or _WHEN,
        updated_at=contact.updated_at or _WHEN,
        deleted_at=contact.deleted_at,
        merged_into_uid=contact.merged_into_uid or None,
        conversation_count=contact.conversation_count,
    )
    return prepare_contact(wire, contact.location.country)
