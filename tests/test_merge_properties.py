"""Properties of the orchestrator: what it sends never turns an opt-out off; the primary ignores order.

The domain rules (``plan_merge``) have their own properties in ``test_survivorship.py``; these are about
what the orchestrator adds on top: the PATCH body built from the plan and the primary's live record, and
the merge as actually run against the emulator.
"""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import pytest
from django.contrib.auth.models import User
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dedup.merging import approve_cluster, run_operation, write_back_body
from dedup.models import MergeOperation
from dedup.phones import normalize_phone
from dedup.records import OPT_OUT_WIRE_FIELDS, MemberRecord, OptOuts
from dedup.survivorship import plan_merge

if TYPE_CHECKING:
    from tests.merge_helpers import MergeEnv

pytest_plugins = ["tests.merge_helpers"]

SPELLINGS = ["0412 345 678", "+61412345678", "(04) 1234-5678", "0412345678", "02 9876 5432", "not a phone"]
TAGS = ["vip", "VIP ", "newsletter", "booked", "Booked"]
NAMES = ["Maria Garcia", "maria garcia", "Garcia, Maria", "", "Unknown"]
flags = st.booleans()


def _key(raw: str) -> str | None:
    result = normalize_phone(raw, "AU")
    return result.e164 if result.valid else None


@st.composite
def members(draw: st.DrawFn, min_size: int = 2, max_size: int = 5) -> list[MemberRecord]:
    n = draw(st.integers(min_size, max_size))
    out = []
    for i in range(n):
        phones = draw(st.lists(st.sampled_from(SPELLINGS), min_size=1, max_size=3, unique=True))
        out.append(
            MemberRecord.build(
                uid=f"ct_{i:03d}_{draw(st.sampled_from('abc'))}",
                location_uid="loc_sydney",
                updated_at=datetime(2026, 1, 1, tzinfo=UTC) + timedelta(minutes=draw(st.integers(0, 5))),
                name=draw(st.sampled_from(NAMES)),
                phone_channels=[(p, _key(p)) for p in phones],
                raw_emails=draw(st.lists(st.sampled_from(["m@example.com", "M@Example.com ", "x@y.com"]), max_size=2)),
                tags=draw(st.lists(st.sampled_from(TAGS), max_size=3)),
                attributes=draw(st.lists(st.tuples(st.sampled_from(["birthday", "tier"]), st.sampled_from(["1", "2"])),
                                         max_size=2)),
                marketing_opt_out=draw(flags),
                sms_opt_out=draw(flags),
                email_opt_out=draw(flags),
            )
        )
    return out


@st.composite
def live_records(draw: st.DrawFn) -> dict[str, Any]:
    """A primary as Podium might hold it when the write-back is built (anything may have changed)."""
    return {
        "name": draw(st.sampled_from(NAMES)),
        "tags": [{"label": t} for t in draw(st.lists(st.sampled_from(TAGS), max_size=3))],
        "channels": [{"type": "PHONE", "identifier": p} for p in draw(st.lists(st.sampled_from(SPELLINGS), max_size=2))],
        "attributes": [{"label": "tier", "value": draw(st.sampled_from(["1", "3"]))}],
        "marketingOptOut": draw(flags),
        "smsOptOut": draw(flags),
        "emailOptOut": draw(flags),
    }


@given(members(), live_records())
def test_the_patch_body_never_turns_an_opt_out_off(records: list[MemberRecord], live: dict[str, Any]) -> None:
    plan = plan_merge(records)
    body = write_back_body(plan, live)
    sent = {name: body[name] for name in OPT_OUT_WIRE_FIELDS if name in body}
    assert all(value is True for value in sent.values()), f"a False opt-out was sent: {sent}"
    after = OptOuts.from_wire({**live, **body})  # what the primary holds once Podium applies the PATCH
    for record in records:
        assert after.covers(record.opt_outs), record.uid
    assert after.covers(OptOuts.from_wire(live)), "an opt-out the primary held live was dropped"


@given(members(), live_records())
def test_the_patch_body_keeps_what_the_primary_holds_live(records: list[MemberRecord], live: dict[str, Any]) -> None:
    body = write_back_body(plan_merge(records), live)
    labels = {t["label"].strip().casefold() for t in body["tags"]}
    assert {t["label"].strip().casefold() for t in live["tags"]} <= labels
    sent_phones = {_key(c["identifier"]) or c["identifier"] for c in body["channels"] if c["type"] == "PHONE"}
    for channel in live["channels"]:
        assert (_key(channel["identifier"]) or channel["identifier"]) in sent_phones


@given(members(), st.randoms(use_true_random=False), live_records())
def test_the_primary_and_the_patch_do_not_depend_on_member_order(
    records: list[MemberRecord], rnd: Any, live: dict[str, Any]
) -> None:
    shuffled = list(records)
    rnd.shuffle(shuffled)
    a, b = plan_merge(records), plan_merge(shuffled)
    assert a.primary_uid == b.primary_uid
    assert write_back_body(a, live) == write_back_body(b, live)


_example = itertools.count()


@pytest.mark.django_db
@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(opt_outs=st.lists(st.tuples(flags, flags, flags), min_size=2, max_size=4), primary_flags=st.tuples(flags, flags, flags))
def test_merges_run_against_podium_never_send_an_opt_out_off(
    merge_env: MergeEnv, manager: User, opt_outs: list[tuple[bool, bool, bool]], primary_flags: tuple[bool, bool, bool]
) -> None:
    n = next(_example)
    number = f"04{n:08d}"
    uids = []
    for i, (marketing, sms, email) in enumerate(opt_outs):
        uid = f"ct_p{n:04d}_{i}"
        spelled = number if i % 2 else f"+61{number[1:]}"
        merge_env.add(uid, phones=[spelled], tags=[f"t{i}"] * (i == 0), marketing_opt_out=marketing,
                      sms_opt_out=sms, email_opt_out=email)
        uids.append(uid)
    merge_env.index(uids)
    op = approve_cluster(merge_env.cluster(uids), user=manager, run_async=True)
    client = merge_env.client()
    late = {k: True for k, v in zip(OPT_OUT_WIRE_FIELDS, primary_flags, strict=True) if v}

    def opted_out_just_before_the_patch(uid: str, body: dict[str, Any]) -> Any:
        # The customer opts out on the primary between the merge and the write-back.
        merge_env.state.patch(uid, late)
        return client.real_update(uid, body)

    client.patch_override = opted_out_just_before_the_patch
    op = run_operation(op.pk, client=client)
    assert op.state == MergeOperation.PATCHED, op.last_error
    assert client.patches
    for _uid, body in client.patches:
        assert all(body[name] is True for name in OPT_OUT_WIRE_FIELDS if name in body)
    union = OptOuts.union_all(OptOuts(*flags_) for flags_ in opt_outs).union(OptOuts(*primary_flags))
    assert OptOuts.from_wire(merge_env.live(op.primary_uid).to_wire()).covers(union)
