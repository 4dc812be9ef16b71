"""``manage.py clusters``: NDJSON lines in the documented shape, a table for people, and the filters."""

from __future__ import annotations

import io
import json
from typing import Any

import pytest
from django.core.management import call_command

from dedup.detection import detect
from dedup.models import Cluster
from tests.index_helpers import AUCKLAND, SYDNEY, contact, index

pytestmark = pytest.mark.django_db


@pytest.fixture
def clusters(db: None) -> None:
    index(
        contact("ct_a1", name="Maria Garcia", phones=("0412 345 678",), marketing_opted_in=False),
        contact("ct_a2", name="GARCIA, Maria", phones=("+61 412 345 678",)),
        contact("ct_h1", name="Ann Lee", phones=("0413 000 000",)),
        contact("ct_h2", name="Bob Lee", phones=("0413000000",)),
        contact("ct_x1", locations=("loc_auckland",), name="Maria Garcia", phones=("+61412345678",)),
        locations=[SYDNEY, AUCKLAND],
    )
    detect()


def run(*args: str) -> str:
    out = io.StringIO()
    call_command("clusters", *args, stdout=out)
    return out.getvalue()


def ndjson(*args: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in run("--format", "ndjson", *args).splitlines()]


def test_ndjson_prints_one_cluster_per_line_in_the_documented_shape(clusters: None) -> None:
    lines = ndjson()
    assert len(lines) == 3
    auto = next(c for c in lines if c["autoMerge"])
    assert set(auto) >= {
        "clusterId", "naturalKeys", "locationUid", "crossLocation", "confidence", "autoMerge", "status",
        "suggestedPrimaryUid", "reasons", "members",
    }  # fmt: skip
    assert auto["naturalKeys"] == ["+61412345678"] and auto["locationUid"] == "loc_sydney"
    assert auto["crossLocation"] is False and auto["status"] == "open" and auto["confidence"] == 0.8
    assert [m["contactUid"] for m in auto["members"]] == ["ct_a1", "ct_a2"]
    assert set(auto["members"][0]) == {
        "contactUid", "locationUid", "name", "fieldCount", "updatedAt", "marketingOptOut", "smsOptOut",
        "emailOptOut",
    }  # fmt: skip
    assert auto["members"][0]["marketingOptOut"] is True
    cross = next(c for c in lines if c["crossLocation"])
    assert cross["locationUid"] is None and cross["autoMerge"] is False
    assert {m["locationUid"] for m in cross["members"]} == {"loc_sydney", "loc_auckland"}


def test_the_filters(clusters: None) -> None:
    assert [c["autoMerge"] for c in ndjson("--auto")] == [True]
    assert all(not c["autoMerge"] for c in ndjson("--review")) and len(ndjson("--review")) == 2
    assert [c["crossLocation"] for c in ndjson("--cross-location")] == [True]
    assert len(ndjson("--location", "loc_auckland")) == 1
    Cluster.objects.filter(auto_merge=True).update(status=Cluster.MERGED)
    assert len(ndjson()) == 2
    assert {c["status"] for c in ndjson("--status", "all")} == {"open", "merged"}


def test_the_table_is_for_people(clusters: None) -> None:
    lines = run().splitlines()
    assert lines[0].split() == ["CLUSTER", "KIND", "CONF", "N", "LOCATION", "STATUS", "PRIMARY", "REASONS"]
    assert lines[-1] == "3 cluster(s)"
    household = next(line for line in lines if "ct_h" in line)
    assert "review" in household and "0.60" in household and "conflicting_names" in household
    assert any("loc_auckland+loc_sydney" in line for line in lines)
