"""Property: no sequence of actions leaves any member's consent weaker on the survivor (both strategies).

Hypothesis generates clusters of two to four contacts of one customer — the same number typed several
ways, maybe a second number or an email, one or two locations, per channel a random marketing opt-in
(by location) and sometimes a transactional opt-out, tags — and a sequence of what can happen to them:
a person approves (accepting losses, or picking another primary when the rule's is blocked), an edit is
made in Podium at a random moment of the merge (a stricter consent or a new tag, on any member), the
worker dies after a random call and is resumed, a duplicate is restored. Everything runs against the
emulator over HTTP. After the sequence:

* the survivor's consent, per number and address, is at least as strict as every member's as the merge
  saw it (``dedup.consent.violations`` against the requirements over all members), and as the last
  state of every duplicate the merge deleted;
* an opt-out made on the primary during the merge is still there (nothing turns one off);
* the survivor's three flags cover the union of the members' whenever the merge succeeded with nothing
  lost;
* a restored duplicate holds at least the consent its merge computed.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pytest
from django.contrib.auth.models import User
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dedup.consent import requirements, violations
from dedup.merge import MergeRefused, approve_cluster, change_primary, resume_operations, run_operation
from dedup.merge.readback import channel_consent
from dedup.merge.restoring import restore_contact
from dedup.models import MergeOperation
from dedup.survivorship import MergePlan
from podium_client import Contact as PodiumContact
from tests.merge_helpers import BURLEIGH, SYDNEY, flags, union_of_flags

if TYPE_CHECKING:
    from tests.merge_helpers import MergeEnv

pytest_plugins = ["tests.merge_helpers"]
pytestmark = pytest.mark.django_db

_examples = itertools.count(1)


@dataclass(frozen=True)
class Member:
    spelling: int  # which spelling of the shared mobile
    landline: bool
    email: bool
    locations: tuple[str, ...]
    opted_in: tuple[str, ...]  # marketing opt-in locations of every channel
    transactional: str | bool  # False, "PHONE", "EMAIL" or True
    tags: tuple[str, ...]
    conversations: int


@dataclass(frozen=True)
class Story:
    members: tuple[Member, ...]
    edit_at: int | None  # the call of the merge during which a person edits in Podium (None: no edit)
    edit_whom: int  # index of the member edited
    edit: str  # "marketing_opt_out", "transactional_opt_out", "add_tag"
    die_after: int | None  # the call after which the worker dies (None: it does not)
    restore: bool


LOCATION_SETS = [(SYDNEY,), (BURLEIGH,), (SYDNEY, BURLEIGH)]
members = st.builds(
    Member,
    spelling=st.integers(0, 2),
    landline=st.booleans(),
    email=st.booleans(),
    locations=st.sampled_from(LOCATION_SETS),
    opted_in=st.sampled_from([(SYDNEY, BURLEIGH), (SYDNEY, BURLEIGH), (SYDNEY,), (BURLEIGH,), ()]),
    transactional=st.sampled_from([False] * 9 + ["PHONE", "EMAIL", True]),
    tags=st.lists(st.sampled_from(["vip", "newsletter", "walk-in"]), max_size=2, unique=True).map(tuple),
    conversations=st.sampled_from([1, 1, 1, 2, 2, 0]),
)
stories = st.builds(
    Story,
    members=st.lists(members, min_size=2, max_size=4).map(tuple),
    edit_at=st.one_of(st.none(), st.integers(1, 12)),
    edit_whom=st.integers(0, 3),
    edit=st.sampled_from(["marketing_opt_out", "transactional_opt_out", "add_tag"]),
    die_after=st.one_of(st.none(), st.integers(1, 14)),
    restore=st.booleans(),
)


class _Died(BaseException):
    """Stands for the worker process dying between two calls."""


def _build(env: MergeEnv, story: Story, n: int) -> list[str]:
    digits = f"4{10_000_000 + n:08d}"
    spellings = [
        f"0{digits[:3]} {digits[3:6]} {digits[6:]}",
        f"+61{digits}",
        f"(0{digits[0]}) {digits[1:5]}-{digits[5:]}",
    ]
    uids = []
    for i, m in enumerate(story.members):
        phones = [spellings[m.spelling]] + ([f"(02) 9{n:03d} {i:04d}"] if m.landline else [])
        uids.append(
            env.add(
                f"p{n:04d}_{i}",
                name="Alex Kim",
                locations=list(m.locations),
                phones=phones,
                emails=[f"alex{n}.{i % 2}@example.com"] if m.email else [],
                tags=list(m.tags),
                conversations=m.conversations,
                marketing_opted_in=list(m.opted_in),
                transactional_opt_out=m.transactional,
            )  # fmt: skip
        )
    return uids


def _approve(env: MergeEnv, user: User, uids: list[str]) -> MergeOperation | None:
    """A person approves, accepting losses; when the rule's primary is blocked, another member is tried."""
    env.index(uids)
    cluster = env.cluster(uids, auto=False)
    for primary in [None, *uids]:
        if primary is not None:
            change_primary(cluster, user=user, primary_uid=primary)
        try:
            return approve_cluster(cluster, user=user, run_async=True, accept_losses=True)
        except MergeRefused as exc:
            assert exc.code == "ERR_DEDUP_010", exc.message  # a blocker: consent that cannot be carried
    return None


def _consent_of(contacts: dict[str, PodiumContact]) -> dict[str, Any]:
    return requirements({uid: channel_consent(c, "AU") for uid, c in contacts.items()})


@pytest.mark.parametrize("strategy", ["consolidate", "native"])
@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(story=stories)
def test_no_sequence_of_actions_leaves_a_members_consent_weaker_on_the_survivor(
    merge_env_factory: Callable[..., MergeEnv], manager: User, strategy: str, story: Story
) -> None:
    env = _env(merge_env_factory, strategy)
    n = next(_examples)
    uids = _build(env, story, n)
    start = {uid: env.alive(uid) for uid in uids}
    op = _approve(env, manager, uids)
    if op is None:
        # Every member is blocked as a primary: nothing is done to anyone.
        assert all(env.alive(uid).updated_at == start[uid].updated_at for uid in uids)
        return
    client = env.client()
    calls: list[str] = []
    edited: list[str] = []
    whom = uids[story.edit_whom % len(uids)]

    def just_after_a_last_look(name: str) -> bool:
        """A duplicate was just read for the last time and its DELETE comes next. The published API has
        no conditional DELETE, so an edit made in that instant is seen by no one: a limit of Podium's
        API that the merge narrows to this one instant, not something a test can ask it to see."""
        if env.native or name != "get_contact":
            return False
        current = MergeOperation.objects.get(pk=op.pk)
        handles = (current.steps.get("retireBy") or {}).values()
        return current.state == MergeOperation.MERGED and client.calls[-1][1][0] in handles

    def after(name: str) -> None:
        calls.append(name)
        if (
            story.edit_at == len(calls)
            and not edited
            and env.live(whom) is not None
            and not just_after_a_last_look(name)
        ):
            edited.append(whom)
            change: dict[str, Any] = {"add_tag": "late"} if story.edit == "add_tag" else {story.edit: True}
            env.edit(whom, **change)
        if story.die_after == len(calls):
            raise _Died

    client.after = after
    try:
        run_operation(op.pk, client=client)
    except _Died:
        pass
    client.after = None
    for _ in range(5):
        resume_operations(client=client)
        op.refresh_from_db()
        if op.state not in MergeOperation.RESUMABLE_STATES:
            break
    assert op.state in MergeOperation.TERMINAL_STATES, (op.state, op.last_error)

    plan = MergePlan.from_dict(op.plan)
    seen = {
        uid: PodiumContact.from_wire(op.member_snapshot[uid]["contact"])
        for uid in op.member_snapshot
        if "contact" in op.member_snapshot[uid]
    }
    if op.state != MergeOperation.PATCHED:
        # Stopped (a member changed during the merge): nobody was retired, or only the unchanged ones
        # whose data and consent are on the primary.
        for uid in plan.duplicate_uids:
            if env.retired(uid):
                assert not violations(
                    _consent_of({uid: seen[uid]}), channel_consent(env.alive(plan.primary_uid), "AU")
                )
        return

    survivor = env.alive(plan.primary_uid)
    consent = channel_consent(survivor, "AU")
    assert violations(_consent_of(seen), consent) == []
    assert violations(plan.consent, consent) == []
    if not env.native:
        for uid, last in env.deleted().items():
            if uid in plan.duplicate_uids:
                assert violations(_consent_of({uid: last}), consent) == [], (
                    "deleted with a consent not carried"
                )
    if edited == [plan.primary_uid] and story.edit != "add_tag":
        # The opt-out made on the primary while the merge ran is still there.
        assert violations(_consent_of({"edit": env.alive(plan.primary_uid)}), consent) == []
        assert flags(survivor).marketing or flags(survivor).sms or flags(survivor).email
    if not op.accepted_losses:
        assert flags(survivor).covers(union_of_flags(seen.values()))

    if story.restore and plan.duplicate_uids:
        duplicate = plan.duplicate_uids[-1]
        record = restore_contact(duplicate, user=None, client=env.client())
        restored = env.alive(record.new_uid or duplicate)
        assert violations(plan.consent, channel_consent(restored, "AU")) == []


_current: dict[str, Any] = {}


def _env(factory: Callable[..., MergeEnv], strategy: str) -> MergeEnv:
    """One emulator per test run: hypothesis calls the test body many times with the same fixtures (the
    factory is kept as the key, so a later run's factory is never mistaken for it)."""
    if _current.get("factory") is not factory:
        _current.clear()
        _current.update(factory=factory, env=factory(strategy))
    env: MergeEnv = _current["env"]
    assert env.strategy == strategy
    return env
