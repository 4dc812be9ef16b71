"""Big runs in worker processes give exactly what one process gives (PostgreSQL: forked workers need
their own connections to a shared database, which the in-memory SQLite test database cannot offer)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from dedup import detection, exportfile
from dedup.models import Cluster, Contact
from dedup.scanning import start_scan
from podium_client.corpus import generate_corpus
from tests.audit_guard import lift_for_the_flush
from tests.index_helpers import open_clusters

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]



@pytest.fixture
def pg_flushable(transactional_db: None) -> Iterator[None]:
    """Let pytest-django flush PostgreSQL after this transactional test despite the audit guard.

    Migration 0002 refuses TRUNCATE of audit events, which is how the test database is emptied after a
    transactional test; the guard is off just for that flush and on again right after it (the flush
    emits ``post_migrate``).
    """
    yield

    lift_for_the_flush()


def test_parallel_preparation_and_scoring_match_one_process(
    pg_flushable: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lines, truth = generate_corpus(400, 5)
    path = tmp_path / "corpus.ndjson"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    monkeypatch.setattr(exportfile, "PARALLEL_MIN_LINES", 0)  # prepare the file in worker processes
    monkeypatch.setattr(detection, "PARALLEL_MIN_CONTACTS", 0)  # and score in worker processes
    monkeypatch.setattr(detection, "BATCH_GROUPS", 25)
    assert exportfile.default_workers(str(path)) >= 1

    run = start_scan(from_file=str(path), run_async=False)
    assert Contact.objects.count() == len(truth) == run.contacts_seen
    parallel = open_clusters()
    assert len(parallel) == run.clusters_found > 25 * 3

    Cluster.objects.all().delete()
    summary = detection.detect(workers=0)
    assert summary.created == len(parallel)
    assert open_clusters() == parallel
