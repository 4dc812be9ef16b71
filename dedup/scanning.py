"""Scans: read Podium (or an export file) into the contact index, then detect clusters. A background job.

``start_scan`` creates the scan run (one queued or running scan per scope: a second one is refused with
``ERR_DEDUP_014`` naming the holder) and enqueues ``run_scan_task`` on django-q2, or runs it inline;
``run_scan`` does the work and keeps the scan-run row up to date (pages, contacts, invalid phones,
heartbeat, checkpoint) so the dashboard and the CLI can show progress, rate and ETA.

Kinds of scan:

* **full** — every page of every location in scope, soft-deleted and merged contacts included (so the
  index learns about deletions); contacts the index holds that Podium no longer lists at all are
  marked deleted. Detection then covers the scope.
* **incremental** — per location, only what changed since that location's watermark (the newest
  ``updatedAt`` of its last successful scan, Podium's clock, not ours) minus a small overlap; a
  location never scanned successfully falls back to full. Detection covers only the contacts written
  and what they connect to, so the cost follows the changes, not the corpus.
* **file** — an NDJSON export through the same preparation and writing code, prepared in worker
  processes when big.

Crash recovery (``ERR_DEDUP_003``): a run whose heartbeat is older than ``STALE_AFTER`` (or whose
worker process is gone) no longer blocks its scope. The next scan of that scope marks it failed with
``ERR_DEDUP_003`` and, when it is the same kind of scan (and the same file), *continues from its
checkpoint*: locations already finished are skipped and the interrupted one resumes at its saved page
cursor (a cursor Podium no longer accepts restarts that location from its first page); a file resumes
after the last line committed. Each page's index rows and the checkpoint commit in one transaction, so
a resumed scan never skips nor double-counts a page.
"""

from __future__ import annotations

import json
import logging
import os
import socket
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import DataError, IntegrityError, connection, transaction
from django.db.models import Count, Exists, Max, OuterRef, Q, QuerySet, Sum
from django.utils import timezone
from django_q.tasks import async_task

from dedup import audit, tallies
from dedup.dblimits import in_values
from dedup.detection import DetectionSummary, detect
from dedup.exportfile import ExportFileError, iter_prepared_file, read_line, survey_file
from dedup.indexing import (
    IndexWriter,
    PreparedContact,
    RejectedLine,
    WriteResult,
    prepare_contact,
    storable_uid,
    unstorable_reason,
)
from dedup.models import (
    Cluster,
    ClusterMember,
    Contact,
    ContactKey,
    ContactLocation,
    Location,
    Policy,
    RejectedRecord,
    ScanRun,
)
from dedup.podium import get_client, read_indexed_contacts
from dedup.reparsing import contacts_homed_at, reparse_location, stale_locations
from dedup.stamps import load_stamps
from podium_client import Contact as PodiumContact
from podium_client import InvalidCursorError, PodiumClient, PodiumError
from podium_client.types import format_timestamp, parse_timestamp

logger = logging.getLogger(__name__)

ERR_INDEX_BUILD = "ERR_DEDUP_003"
ERR_CONCURRENT = "ERR_DEDUP_014"

# A running scan that has not reported for this long is taken for crashed.
STALE_AFTER = timedelta(minutes=5)
# Incremental scans re-read this much before the watermark: Podium's listing may show a change a
# moment after its updatedAt (replication lag), and re-reading a few contacts costs nothing.
DEFAULT_OVERLAP = timedelta(minutes=5)
# Contacts read from Podium per index transaction.
_WRITE_EVERY = 1000
# A scan reuses the duplicate rate another scan of its scope measured this recently (it is a
# statistic for the dashboard; measuring it costs a pass over the cluster tables).
_RATE_FRESH_FOR = timedelta(hours=1)

# A file scan that wrote at most this many contacts detects only them and what they connect to;
# more (a first load, a large change) and it detects its whole scope, which is cheaper per contact.
_FILE_DETECT_CHANGED_MAX = 50_000

# How often a scan reading nothing new writes its progress (it always writes with what it indexes).
_LAZY_SAVE_EVERY = timedelta(seconds=1)
# Watermarks are looked up in this many recent successful scans.
_WATERMARK_HISTORY = 500

Progress = Callable[[ScanRun], None]


class ConcurrentRunError(Exception):
    """A scan of the same (or an overlapping) scope is queued or running; ``holder`` is that scan run."""

    code = ERR_CONCURRENT

    def __init__(self, holder: ScanRun) -> None:
        self.holder = holder
        super().__init__(
            f"{ERR_CONCURRENT} concurrent_run: scan #{holder.pk} (started by {_who(holder)} "
            f"{_ago(holder.started_at or holder.created_at)}) is already {holder.state} for "
            f"{describe_scope(holder.scope)}; wait for it to finish, or re-run after "
            f"{int(STALE_AFTER.total_seconds() // 60)} minutes without progress to resume it"
        )


class ScanError(Exception):
    """A scan failed; ``code`` is the product error code and ``scan_run`` the failed run (if created)."""

    def __init__(self, message: str, code: str = ERR_INDEX_BUILD, scan_run: ScanRun | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.scan_run = scan_run


class _TakenOver(Exception):
    """This run was declared crashed and resumed by another one: stop without touching anything."""


# --- starting -----------------------------------------------------------------------------------------


def scope_key_for(locations: Sequence[str]) -> str:
    """The canonical scope of a scan: ``all`` or the sorted location uids."""
    scope = sorted(set(locations))
    if not scope:
        return "all"
    key = "locations:" + ",".join(scope)
    if len(key) > 300:
        import hashlib

        key = "locations#" + hashlib.sha256(key.encode()).hexdigest()
    return key


def describe_scope(scope: Sequence[str]) -> str:
    """``all locations`` / ``location loc_sydney`` / ``locations a, b``, for messages."""
    if not scope:
        return "all locations"
    if len(scope) == 1:
        return f"location {scope[0]}"
    return "locations " + ", ".join(scope)


def _overlaps(a: Sequence[str], b: Sequence[str]) -> bool:
    return not a or not b or bool(set(a) & set(b))


def _who(run: ScanRun) -> str:
    if run.requested_by_id is not None and run.requested_by is not None:
        return f"user:{run.requested_by.get_username()}"
    return run.holder or "system"


def _ago(moment: datetime | None) -> str:
    if moment is None:
        return "just now"
    seconds = max((timezone.now() - moment).total_seconds(), 0)
    if seconds < 90:
        return f"{int(seconds)} s ago"
    if seconds < 5400:
        return f"{int(seconds // 60)} min ago"
    return f"{seconds / 3600:.1f} h ago"


def _worker_alive(run: ScanRun) -> bool:
    worker = run.checkpoint.get("worker") if isinstance(run.checkpoint, dict) else None
    if not isinstance(worker, dict) or worker.get("host") != socket.gethostname():
        return True  # another machine's process: only its heartbeat can tell
    try:
        os.kill(int(worker.get("pid", 0)), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, ValueError, OverflowError):
        return True
    return True


def is_crashed(run: ScanRun, now: datetime | None = None) -> bool:
    """Whether an active scan run has stopped for good: stale heartbeat, or its worker process is gone."""
    if not run.is_active:
        return False
    now = now or timezone.now()
    last_sign = run.heartbeat_at or run.started_at or run.created_at
    if now - last_sign > STALE_AFTER:
        return True
    return run.state == ScanRun.RUNNING and not _worker_alive(run)


def _mark_crashed(run: ScanRun, resumed_by: str) -> None:
    now = timezone.now()
    updated = ScanRun.objects.filter(pk=run.pk, state__in=ScanRun.ACTIVE_STATES).update(
        state=ScanRun.FAILED,
        error_code=ERR_INDEX_BUILD,
        error_message=(
            f"{ERR_INDEX_BUILD} index_build_failed: the scan stopped reporting "
            f"(last heartbeat {_ago(run.heartbeat_at or run.started_at or run.created_at)}); "
            f"resumed by {resumed_by}"
        ),
        finished_at=now,
    )
    if updated:
        audit.record(
            "scan.failed",
            actor="system",
            location_uids=run.scope,
            payload={
                "scanRun": run.pk,
                "code": ERR_INDEX_BUILD,
                "reason": "crashed",
                "resumedBy": resumed_by,
            },
        )


def start_scan(
    *,
    locations: list[str] | None = None,
    full: bool = False,
    from_file: str | None = None,
    reparse: bool = False,
    requested_by: Any = None,
    actor: str | None = None,
    run_async: bool = True,
    progress_callback: Progress | None = None,
) -> ScanRun:
    """Create a scan run for ``locations`` (``None``/empty: every location) and run it.

    ``full`` re-reads every contact; otherwise the scan is incremental per location. ``from_file``
    indexes an NDJSON export instead of calling Podium. ``reparse`` reads neither: it re-parses the
    indexed contacts of the locations whose region changed (``dedup.reparsing``), which every other
    kind of scan also does at its end. Raises ``ConcurrentRunError`` while a scan of an
    overlapping scope is queued or running; a crashed one is taken over and resumed instead (see the
    module docstring). With ``run_async`` the work is a django-q2 task (``run_scan_task``) enqueued
    when the surrounding transaction commits; otherwise it runs here (reporting to
    ``progress_callback`` after every page) and ``ScanError`` reports a failure.
    """
    scope = sorted(set(locations or []))
    if reparse:
        kind = ScanRun.REPARSE
    else:
        kind = ScanRun.FILE if from_file else (ScanRun.FULL if full else ScanRun.INCREMENTAL)
    source = os.path.abspath(from_file) if from_file else ""
    if from_file and not os.path.isfile(source):
        raise ScanError(f"export file {from_file} does not exist or is not a file", code="ERR_DEDUP_003")
    actor_name, actor_id = audit.actor_for(requested_by)
    if actor:
        actor_name = actor
    scope_key = scope_key_for(scope)
    with transaction.atomic():
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                # Serializes the overlap check below; the unique constraint covers equal scopes anyway.
                cursor.execute("SELECT pg_advisory_xact_lock(%s)", [0x5CA2])
        checkpoint: dict[str, Any] = {}
        for other in ScanRun.objects.filter(state__in=ScanRun.ACTIVE_STATES).select_related("requested_by"):
            if not _overlaps(other.scope, scope):
                continue
            if not is_crashed(other):
                raise ConcurrentRunError(other)
            _mark_crashed(other, resumed_by=actor_name)
            if other.kind == kind and other.source_file == source and other.scope == scope:
                checkpoint = {k: v for k, v in (other.checkpoint or {}).items() if k != "worker"}
                checkpoint["resumedFrom"] = other.pk
        try:
            with transaction.atomic():
                run = ScanRun.objects.create(
                    kind=kind,
                    scope=scope,
                    scope_key=scope_key,
                    source_file=source,
                    requested_by=requested_by if actor_id is not None else None,
                    holder=actor_name,
                    checkpoint=checkpoint,
                )
        except IntegrityError:
            holder = ScanRun.objects.filter(scope_key=scope_key, state__in=ScanRun.ACTIVE_STATES).first()
            if holder is None:
                raise
            raise ConcurrentRunError(holder) from None
        audit.record(
            "scan.started",
            actor=actor_name,
            actor_user_id=actor_id,
            location_uids=scope,
            payload={
                "scanRun": run.pk,
                "kind": kind,
                "scope": describe_scope(scope),
                "file": source or None,
                "resumedFrom": checkpoint.get("resumedFrom"),
            },
        )
    if run_async:
        run_id = run.pk
        transaction.on_commit(
            lambda: async_task(
                "dedup.scanning.run_scan_task", run_id, task_name=f"scan #{run_id}", group="scans"
            )
        )
        return run
    return run_scan(run, progress_callback)


def run_scan_task(scan_run_id: int) -> dict[str, Any]:
    """The django-q2 task: run the scan and return its counters (kept in the task's result)."""
    run = run_scan(ScanRun.objects.get(pk=scan_run_id))
    return {
        "scanRun": run.pk,
        "state": run.state,
        "contacts": run.contacts_seen,
        "clusters": run.clusters_found,
    }


# --- running ------------------------------------------------------------------------------------------


class _Run:
    """The state of one executing scan: its row, writer, checkpoint and the counters it reports."""

    def __init__(self, run: ScanRun, progress: Progress | None) -> None:
        self.run = run
        self.progress = progress
        self.writer = IndexWriter(Policy.current().default_region)
        self.checkpoint: dict[str, Any] = dict(run.checkpoint or {})
        self.checkpoint["worker"] = {"host": socket.gethostname(), "pid": os.getpid()}
        self.checkpoint.setdefault("touchedSince", timezone.now().isoformat())
        self.checkpoint.setdefault("locations", {})
        # Index rows written by this process; a resumed scan also counts what its predecessor wrote.
        self.touched_ids: set[int] = set()
        # A file scan stops collecting ids past _FILE_DETECT_CHANGED_MAX and says so here.
        self.touched_many = False
        self.pending: dict[str, Any] = {}
        self.saved_at: datetime | None = None

    def location_state(self, uid: str) -> dict[str, Any]:
        states: dict[str, dict[str, Any]] = self.checkpoint["locations"]
        return states.setdefault(uid, {})

    def save(self, *, lazy: bool = False, **fields: Any) -> None:
        """Write counters, heartbeat and checkpoint, unless another run took this one over.

        ``lazy``: only when the last write is a second old (a rescan skips thousands of unchanged
        contacts a second; a round trip per chunk of them would be most of its time). The next
        save writes what a lazy one held back.
        """
        now = timezone.now()
        for name, value in fields.items():
            setattr(self.run, name, value)
        self.pending.update(fields)
        if lazy and self.saved_at is not None and now - self.saved_at < _LAZY_SAVE_EVERY:
            return
        fields = {**self.pending, "heartbeat_at": now, "checkpoint": self.checkpoint}
        self.run.heartbeat_at, self.run.checkpoint = now, self.checkpoint
        self.pending = {}
        self.saved_at = now
        if not ScanRun.objects.filter(pk=self.run.pk, state=ScanRun.RUNNING).update(**fields):
            raise _TakenOver

    def report(self) -> None:
        if self.progress is not None:
            self.progress(self.run)


def run_scan(scan_run: ScanRun, progress: Progress | None = None) -> ScanRun:
    """Do the work of a queued scan run, synchronously; returns the run in its final state.

    Updates the row as it goes (pages, contacts_seen, contacts_total, invalid_phones, heartbeat_at,
    checkpoint) and calls ``progress(run)`` after every page; then runs detection and records
    clusters_found, auto_clusters and duplicate_rate. On failure the run is marked failed with
    ``ERR_DEDUP_003`` and ``ScanError`` is raised; a re-run resumes it.
    """
    now = timezone.now()
    claimed = ScanRun.objects.filter(pk=scan_run.pk, state=ScanRun.QUEUED).update(
        state=ScanRun.RUNNING, started_at=now, heartbeat_at=now
    )
    scan_run.refresh_from_db()
    if not claimed:
        logger.warning("scan #%s is %s, not queued; nothing to do", scan_run.pk, scan_run.state)
        return scan_run
    state = _Run(scan_run, progress)
    logger.info("scan #%s (%s, %s) started", scan_run.pk, scan_run.kind, describe_scope(scan_run.scope))
    try:
        state.save()
        state.report()
        if scan_run.kind == ScanRun.FILE:
            _scan_file(state)
        elif scan_run.kind != ScanRun.REPARSE:
            with get_client() as client:
                _scan_podium(state, client)
        _reparse_stale_locations(state)
        _analyze_if_grown(state)
        summary = _detect_after(state)
        _finish(state, summary)
    except _TakenOver:
        logger.warning("scan #%s was taken over by a newer run; stopping", scan_run.pk)
        scan_run.refresh_from_db()
        return scan_run
    except Exception as exc:  # noqa: BLE001 - any failure fails the run, is recorded, and is raised again
        _fail(state, exc)
        raise ScanError(scan_run.error_message, code=scan_run.error_code, scan_run=scan_run) from exc
    return scan_run


def _failure_text(exc: BaseException) -> str:
    if isinstance(exc, ScanError):
        return str(exc)
    if isinstance(exc, ExportFileError):
        return f"the export file is not the contract's NDJSON: {exc}; fix or re-export it"
    if isinstance(exc, OSError):
        return f"the export file could not be read: {exc}"
    if isinstance(exc, PodiumError):
        return (
            f"Podium failed or is unreachable ({type(exc).__name__}: {exc}); check PODIUM_BASE_URL and the "
            "credentials, then re-run the scan: it continues where it stopped"
        )
    return f"{type(exc).__name__}: {exc}; re-run the scan: it continues where it stopped"


def _fail(state: _Run, exc: BaseException) -> None:
    run = state.run
    message = f"{ERR_INDEX_BUILD} index_build_failed: {_failure_text(exc)}"
    logger.error("scan #%s failed: %s", run.pk, message)
    fields = {
        "state": ScanRun.FAILED,
        "error_code": ERR_INDEX_BUILD,
        "error_message": message,
        "finished_at": timezone.now(),
        "checkpoint": {k: v for k, v in state.checkpoint.items() if k != "worker"},
    }
    ScanRun.objects.filter(pk=run.pk, state=ScanRun.RUNNING).update(**fields)
    for name, value in fields.items():
        setattr(run, name, value)
    audit.record(
        "scan.failed",
        actor=run.holder or "system",
        location_uids=run.scope,
        payload={
            "scanRun": run.pk,
            "code": ERR_INDEX_BUILD,
            "reason": message,
            "contactsSeen": run.contacts_seen,
        },
    )


def _finish(state: _Run, summary: DetectionSummary) -> None:
    run = state.run
    state.checkpoint.pop("worker", None)
    scope_ids = _scope_location_ids(run.scope)
    state.save(
        state=ScanRun.SUCCEEDED,
        finished_at=timezone.now(),
        clusters_found=summary.clusters_open,
        auto_clusters=summary.auto,
        duplicate_rate=_fresh_duplicate_rate(run, summary, scope_ids),
    )
    audit.record(
        "scan.finished",
        actor=run.holder or "system",
        location_uids=run.scope,
        payload={
            "scanRun": run.pk,
            "kind": run.kind,
            "pages": run.pages,
            "contactsSeen": run.contacts_seen,
            "invalidPhones": run.invalid_phones,
            "rejected": run.rejected_count,
            "detection": summary.as_dict(),
        },
    )
    tallies.compact()
    logger.info(
        "scan #%s finished: %d contacts in %d pages, %d invalid phones, %d rejected, %d open clusters (%d auto) "
        "in %.1fs",
        run.pk, run.contacts_seen, run.pages, run.invalid_phones, run.rejected_count, run.clusters_found,
        run.auto_clusters, run.elapsed_seconds,
    )  # fmt: skip
    state.report()


def _scope_location_ids(scope: Sequence[str]) -> list[int] | None:
    if not scope:
        return None
    return list(Location.objects.filter(uid__in=in_values(list(scope))).values_list("pk", flat=True))


def _fresh_duplicate_rate(
    run: ScanRun, summary: DetectionSummary, location_ids: list[int] | None
) -> float | None:
    """The scope's duplicate rate: measured after full and file scans; after an incremental one that
    changed few clusters, the rate another scan of the scope measured within the hour."""
    if run.kind == ScanRun.INCREMENTAL and summary.created + summary.superseded < 1000:
        recent = (
            ScanRun.objects.filter(
                scope_key=run.scope_key,
                state=ScanRun.SUCCEEDED,
                duplicate_rate__isnull=False,
                finished_at__gte=timezone.now() - _RATE_FRESH_FOR,
            )
            .order_by("-finished_at")
            .values_list("duplicate_rate", flat=True)
            .first()
        )
        if recent is not None:
            return recent
    return _duplicate_rate(location_ids)


def _duplicate_rate(location_ids: list[int] | None) -> float | None:
    """Share of the scope's active contacts that sit in an open cluster.

    Open within-location clusters are disjoint (they are the components of one location's key
    graph), so their sizes add up; cross-location clusters only add the members no within-location
    cluster holds. Two aggregates instead of a distinct count over every member.
    """
    active = Contact.objects.filter(deleted_at__isnull=True, merged_into_uid="")
    within = Cluster.objects.filter(status=Cluster.OPEN, cross_location=False)
    cross_members = ClusterMember.objects.filter(cluster__status=Cluster.OPEN, cluster__cross_location=True)
    if location_ids is not None:
        ids = in_values(location_ids)
        active = active.filter(location_id__in=ids)
        within = within.filter(location_id__in=ids)
        cross_members = cross_members.filter(location_id__in=ids)
    total = active.count()
    if not total:
        return None
    in_within = within.aggregate(n=Sum("member_count"))["n"] or 0
    # NOT EXISTS, not NOT IN: the planner turns it into an anti-join instead of a subplan per row.
    held_by_within = ClusterMember.objects.filter(
        contact_id=OuterRef("contact_id"), cluster__status=Cluster.OPEN, cluster__cross_location=False
    )
    cross_only = cross_members.filter(~Exists(held_by_within)).values("contact_id").distinct().count()
    return min((in_within + cross_only) / total, 1.0)


def _analyze_if_grown(state: _Run) -> None:
    # Right after a bulk load the planner's statistics still describe the empty tables, and a plan
    # made for 100 rows over a million takes minutes. Cheap next to the load itself.
    if not state.touched_many and len(state.touched_ids) < 10_000:
        return  # few rows written (a rescan of an unchanged export writes none): statistics hold
    with connection.cursor() as cursor:
        for model in (Contact, ContactKey):
            cursor.execute(f"ANALYZE {model._meta.db_table}")


def _reparse_stale_locations(state: _Run) -> None:
    """Re-parse the contacts of the scope's locations whose region changed (see ``dedup.reparsing``).

    Runs after the read, so contacts this scan wrote with a region that changed while it ran are
    re-parsed too. A ``reparse`` run does only this and counts the contacts as its progress; another
    scan notes them in its checkpoint. A region changed again during the pass is picked up by one
    more pass (a few at most: each pass reads the regions afresh).
    """
    run = state.run
    counts: dict[str, int] = state.checkpoint.setdefault("reparsed", {})
    for _pass in range(3):
        stale = stale_locations(run.scope)
        if not stale:
            return
        if run.kind == ScanRun.REPARSE:
            state.save(contacts_total=run.contacts_seen + contacts_homed_at([loc.pk for loc in stale]))
        for location in stale:

            def on_batch(result: WriteResult, rows: int, uid: str = location.uid) -> None:
                state.touched_ids.update(result.contact_ids)
                counts[uid] = counts.get(uid, 0) + rows
                if run.kind == ScanRun.REPARSE:
                    state.save(contacts_seen=run.contacts_seen + rows, pages=run.pages + 1,
                               invalid_phones=run.invalid_phones + result.invalid_phones)  # fmt: skip
                else:
                    state.save()
                state.report()

            reparse_location(state.writer, location, on_batch)
            state.writer.reload_locations()


def _detect_after(state: _Run) -> DetectionSummary:
    run = state.run
    state.save()
    actor = run.holder or "system"
    mode = (state.checkpoint.get("stream") or {}).get("mode")
    if (run.kind == ScanRun.INCREMENTAL and mode == "incremental") or run.kind == ScanRun.REPARSE:
        # Only what changed, plus what it connects to: the contacts written since this scan (or the
        # crashed scan it resumes) began.
        touched = set(state.touched_ids)
        if "resumedFrom" in state.checkpoint:
            since = datetime.fromisoformat(state.checkpoint["touchedSince"])
            touched.update(Contact.objects.filter(indexed_at__gte=since).values_list("pk", flat=True))
        return detect(contact_ids=touched, scan_run=run, actor=actor)
    if run.kind == ScanRun.FILE and "resumedFrom" not in state.checkpoint:
        summary = _detect_file_changes(state)
        if summary is not None:
            return summary
    # A full read (or a read whole for want of a watermark), or a file: detect the whole scope.
    return detect(locations=run.scope or None, scan_run=run, actor=actor)


def _detect_file_changes(state: _Run) -> DetectionSummary | None:
    """Detection after a file scan that changed little; None when the whole scope must be detected.

    Nothing written, and the index unchanged since the last successful scan of the scope detected
    it: the clusters are as they were, so they are only counted. A few contacts written: only
    they and what they connect to are detected. Most of the scope written (a first load): None.
    """
    run = state.run
    touched = state.touched_ids
    if state.touched_many:
        return None
    if touched:
        return detect(contact_ids=touched, scan_run=run, actor=run.holder or "system")
    newest_write = Contact.objects.aggregate(newest=Max("indexed_at"))["newest"]
    detected = (
        ScanRun.objects.filter(scope_key=run.scope_key, state=ScanRun.SUCCEEDED)
        .exclude(pk=run.pk)
        .aggregate(last=Max("finished_at"))["last"]
    )
    if detected is None or (newest_write is not None and newest_write > detected):
        return None
    logger.info("scan #%s changed nothing; detection skipped", run.pk)
    return _open_clusters_summary(run.scope)


def _open_clusters_summary(scope: Sequence[str]) -> DetectionSummary:
    """The open clusters of a scope, counted by kind (what detection would report unchanged)."""
    clusters = Cluster.objects.filter(status=Cluster.OPEN)
    location_ids = _scope_location_ids(scope)
    if location_ids is not None:
        ids = in_values(location_ids)
        clusters = clusters.filter(Q(location_id__in=ids) | Q(locations__in=ids)).distinct()
    summary = DetectionSummary()
    for kind, count in clusters.order_by().values_list("kind").annotate(n=Count("pk", distinct=True)):
        summary.clusters_open += count
        if kind == Cluster.CROSS:
            summary.cross += count
        elif kind == Cluster.AUTO:
            summary.auto += count
        else:
            summary.review += count
    summary.unchanged = summary.clusters_open
    return summary


# --- reading Podium -------------------------------------------------------------------------------------


def overlap() -> timedelta:
    """The safety overlap of incremental scans (``DEDUP_SCAN_OVERLAP_SECONDS``, default 5 minutes)."""
    seconds = getattr(settings, "DEDUP_SCAN_OVERLAP_SECONDS", None)
    return DEFAULT_OVERLAP if seconds is None else timedelta(seconds=float(seconds))


def last_watermark(scope: Sequence[str]) -> datetime | None:
    """The newest ``updatedAt`` (Podium's clock) the last successful read of Podium covering ``scope``
    indexed: a scan of every location covers any scope; a location-scoped one only its own."""
    key = scope_key_for(scope)
    runs = ScanRun.objects.filter(state=ScanRun.SUCCEEDED, kind__in=(ScanRun.FULL, ScanRun.INCREMENTAL))
    runs = runs.filter(Q(scope_key="all") | Q(scope_key=key)).order_by("-finished_at", "-pk")
    for checkpoint in runs.values_list("checkpoint", flat=True)[:_WATERMARK_HISTORY]:
        stream = (checkpoint or {}).get("stream") or {}
        if stream.get("done") and stream.get("watermark"):
            return parse_timestamp(stream["watermark"])
    return None


def _newer(current: str | None, candidate: datetime | None) -> str | None:
    if candidate is None:
        return current
    if current is None or parse_timestamp(current) < candidate:
        return format_timestamp(candidate)
    return current


def _scan_podium(state: _Run, client: PodiumClient) -> None:
    """Read the organization's contacts (Podium lists them organization-wide) into the index.

    A location scope keeps the contacts that belong to one of its locations. The read is one stream
    with one cursor and one watermark, checkpointed every ~1,000 contacts.
    """
    run = state.run
    locations = client.list_locations()
    state.writer.ensure_locations(locations)
    known = {loc.uid for loc in locations}
    unknown = sorted(set(run.scope) - known)
    if unknown:
        raise ScanError(f"Podium has no location {', '.join(unknown)}; check the --location uids")
    stream = state.checkpoint.setdefault("stream", {})
    if stream.get("done"):
        return
    if "mode" not in stream:
        since = None if run.kind == ScanRun.FULL else last_watermark(run.scope)
        stream["mode"] = "incremental" if since is not None else "full"
        stream["since"] = format_timestamp(since - overlap()) if since is not None else None
        stream["startedAt"] = timezone.now().isoformat()
        stream["previousWatermark"] = format_timestamp(since) if since is not None else None
    if run.contacts_total is None and stream["mode"] == "full":
        # The index's count is the estimate for a full read; an incremental one reads an unknown few.
        state.save(contacts_total=_active_in_scope(run.scope).count() or None)
    _read_stream(state, client, stream)


def _active_in_scope(scope: Sequence[str]) -> QuerySet[Contact]:
    contacts = Contact.objects.filter(deleted_at__isnull=True, merged_into_uid="")
    if scope:
        contacts = contacts.filter(
            Exists(
                ContactLocation.objects.filter(
                    contact_id=OuterRef("pk"), location__uid__in=in_values(list(scope))
                )
            )
        )
    return contacts


def _read_stream(state: _Run, client: PodiumClient, stream: dict[str, Any]) -> None:
    run = state.run
    since = parse_timestamp(stream["since"]) if stream.get("since") else None
    cursor = stream.get("cursor")
    include_deleted = client.has("soft-delete")
    try:
        pages = client.iter_contact_pages(updated_after=since, include_deleted=include_deleted, cursor=cursor)
        first = next(pages)
    except InvalidCursorError:
        if cursor is None:
            raise
        # The saved cursor expired while the scan was down: read again from the top (the writes are
        # idempotent, and an incremental read skips what the index already holds).
        logger.warning("scan #%s: saved cursor refused; restarting the read", run.pk)
        stream.pop("cursor", None)
        pages = client.iter_contact_pages(updated_after=since, include_deleted=include_deleted)
        first = next(pages)
    incremental = stream["mode"] == "incremental"
    scope = set(run.scope)
    # Pages are written a few at a time: one transaction (index rows and checkpoint together) per
    # ~1,000 contacts rather than per 100, while a crash still re-reads at most those few pages.
    buffered: list[PodiumContact] = []
    rejected: list[RejectedLine] = []
    listed = 0
    pages_read = 0
    for page in _chain(first, pages):
        listed += len(page) + len(page.rejected)
        pages_read += 1
        buffered.extend(c for c in page if not scope or scope.intersection(c.location_uids))
        rejected.extend(_rejected_from_podium(item, exc) for item, exc in page.rejected)
        newest = max((contact.updated_at for contact in page if contact.updated_at is not None), default=None)
        stream["pendingWatermark"] = _newer(stream.get("pendingWatermark"), newest)
        if len(buffered) >= _WRITE_EVERY and page.next_cursor is not None:
            _write_pages(state, stream, buffered, rejected, listed, pages_read, page.next_cursor, incremental)
            buffered, rejected, listed, pages_read = [], [], 0, 0
    # The last pages and the end of the read commit together: a crash right after them must not look
    # like a read that was never finished.
    _write_pages(state, stream, buffered, rejected, listed, pages_read, None, incremental, finished=True)


def _rejected_from_podium(item: Any, exc: PodiumError) -> RejectedLine:
    uid = item.get("uid") if isinstance(item, dict) else None
    try:
        raw = json.dumps(item, ensure_ascii=False, default=str)
    except ValueError:
        raw = repr(item)
    return RejectedLine(None, uid if isinstance(uid, str) else "", exc.message, raw)


def _write_pages(
    state: _Run,
    stream: dict[str, Any],
    contacts: list[PodiumContact],
    rejected: list[RejectedLine],
    listed: int,
    pages_read: int,
    next_cursor: str | None,
    incremental: bool,
    finished: bool = False,
) -> None:
    """Index some pages and move the checkpoint past them, in one transaction.

    With ``finished`` these are the last pages: the read is marked done (and, after a full read, what
    Podium no longer lists is marked deleted) in the same transaction.
    """
    run = state.run
    # An incremental read re-lists the overlap window; what the index already holds as is (same
    # updatedAt, same deletion state) is not written again. A full read rewrites everything, so it
    # also repairs rows indexed with an older normalization or region.
    changed = _changed_only(contacts) if incremental else contacts
    prepared: list[PreparedContact] = []
    for contact in changed:
        item = _prepare_or_reject(state.writer, contact, rejected)
        if item is not None:
            prepared.append(item)
    with transaction.atomic():
        by_uid = {contact.uid: contact for contact in changed}
        result = write_quarantining(
            state.writer, prepared, rejected, lambda p: (None, _contact_json(by_uid[p.uid]))
        )
        state.touched_ids.update(result.contact_ids)
        _record_rejected(state, rejected, source="podium")
        stream["cursor"] = next_cursor
        stream["watermark"] = _newer(
            stream.get("watermark") or stream.get("previousWatermark"),
            parse_timestamp(stream["pendingWatermark"]) if stream.get("pendingWatermark") else None,
        )
        if finished:
            if stream["mode"] == "full":
                stream["vanished"] = _mark_vanished(run.scope, stream["startedAt"])
            stream["done"] = True
            stream.pop("cursor", None)
        state.save(
            pages=run.pages + pages_read,
            contacts_seen=run.contacts_seen + listed,
            invalid_phones=run.invalid_phones + result.invalid_phones,
            rejected_count=run.rejected_count + len(rejected),
        )
    state.report()


def _prepare_or_reject(
    writer: IndexWriter, contact: PodiumContact, rejected: list[RejectedLine]
) -> PreparedContact | None:
    home = contact.location_uid
    region = writer.region_for(home) if home else writer.default_region
    try:
        prepared = prepare_contact(contact, region)
    except ValueError as exc:
        rejected.append(RejectedLine(None, storable_uid(contact.uid), str(exc), _contact_json(contact)))
        return None
    problem = unstorable_reason(prepared)
    if problem is not None:
        rejected.append(RejectedLine(None, storable_uid(contact.uid), problem, _contact_json(contact)))
        return None
    return prepared


def write_quarantining(
    writer: IndexWriter,
    items: Sequence[PreparedContact],
    rejected: list[RejectedLine],
    source_of: Callable[[PreparedContact], tuple[int | None, str]],
) -> WriteResult:
    """Write ``items``; when the database refuses the batch, set aside only the records it refuses.

    ``unstorable_reason`` catches what is known to be unstorable before any write; this is the net
    under it, for whatever else a database refuses (a value PostgreSQL and SQLite disagree on, a
    limit nobody thought of): one bad record must never stop a scan that re-running cannot finish
    either. The batch is halved until the refused records are alone (a few extra savepoints, only
    when something was refused); each is appended to ``rejected`` with the database's reason and its
    line and raw text from ``source_of``. Must run inside a transaction.
    """
    # The bulk paths write through the driver's own cursor (COPY), whose errors Django does not wrap.
    driver: Any = getattr(connection, "Database", None)
    refused: tuple[type[BaseException], ...] = (DataError, IntegrityError)
    if driver is not None:
        refused += (driver.DataError, driver.IntegrityError)
    try:
        with transaction.atomic():
            return writer.write(items)
    except refused as exc:
        # Placeholder locations created by the rolled-back write are gone with it.
        writer.reload_locations()
        if len(items) == 1:
            line_number, raw = source_of(items[0])
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            rejected.append(
                RejectedLine(line_number, storable_uid(items[0].uid), f"the database refused it: {reason}", raw)
            )
            logger.warning("a record was refused by the database and set aside: %s", type(exc).__name__)
            return WriteResult()
    half = len(items) // 2
    first = write_quarantining(writer, items[:half], rejected, source_of)
    second = write_quarantining(writer, items[half:], rejected, source_of)
    return _combined(first, second)


def _combined(a: WriteResult, b: WriteResult) -> WriteResult:
    newest = max((t for t in (a.newest_updated_at, b.newest_updated_at) if t is not None), default=None)
    max_updated = dict(a.max_updated_at)
    for uid, moment in b.max_updated_at.items():
        if uid not in max_updated or moment > max_updated[uid]:
            max_updated[uid] = moment
    return WriteResult(
        contacts=a.contacts + b.contacts,
        invalid_phones=a.invalid_phones + b.invalid_phones,
        contact_ids=a.contact_ids + b.contact_ids,
        max_updated_at=max_updated,
        newest_updated_at=newest,
    )


def _contact_json(contact: PodiumContact) -> str:
    return json.dumps(contact.to_wire(), ensure_ascii=False)


def _record_rejected(state: _Run, rejected: Sequence[RejectedLine], source: str) -> None:
    """Keep what a scan set aside, for admins (raw text bounded, unstorable characters escaped)."""
    if not rejected:
        return
    limit = RejectedRecord.RAW_MAX
    RejectedRecord.objects.bulk_create(
        RejectedRecord(
            scan_run=state.run,
            source=source[:500],
            line_number=r.line_number,
            contact_uid=_storable(r.contact_uid)[:64],
            reason=_storable(r.reason)[:2000],
            raw=_storable(r.raw[:limit]),
        )
        for r in rejected
    )
    for r in rejected:
        logger.warning(
            "scan #%s set aside %s: %s",
            state.run.pk,
            f"line {r.line_number}" if r.line_number else "a record",
            r.reason,
        )


def _storable(text: str) -> str:
    """Text any database stores: NULs and unpaired surrogates escaped, not dropped."""
    return text.encode("utf-8", errors="backslashreplace").decode("utf-8").replace("\x00", "\\x00")


def _changed_only(page: Sequence[PodiumContact]) -> list[PodiumContact]:
    """The contacts of a page that differ from what the index holds (or that it does not hold)."""
    stored = {
        uid: (updated_at, deleted_at, merged_into_uid)
        for uid, updated_at, deleted_at, merged_into_uid in Contact.objects.filter(
            uid__in=[contact.uid for contact in page]
        ).values_list("uid", "updated_at", "deleted_at", "merged_into_uid")
    }
    return [
        contact
        for contact in page
        if stored.get(contact.uid) != (contact.updated_at, contact.deleted_at, contact.merged_into_uid or "")
    ]


def _chain(first: Any, rest: Iterable[Any]) -> Iterable[Any]:
    yield first
    yield from rest


def _mark_vanished(scope: Sequence[str], started_at: str) -> int:
    """Contacts of the scope that a complete full read did not list.

    Podium's published API does not list deleted contacts, so a contact missing from a full read is
    gone from Podium (a soft-delete tenant lists hidden ones, which are indexed as such); the index
    marks it deleted so it never joins a cluster again.
    """
    since = datetime.fromisoformat(started_at)
    vanished = _active_in_scope(scope).filter(indexed_at__lt=since)
    count = vanished.update(deleted_at=timezone.now(), indexed_at=timezone.now())
    if count:
        logger.warning("%d contact(s) are no longer listed by Podium; marked deleted", count)
    return count


# --- reading an export file ---------------------------------------------------------------------------------


def _scan_file(state: _Run) -> None:
    run = state.run
    # The survey reads the whole file (CPU in this process) while the index's version of every contact
    # is read (mostly waiting on the database): done side by side, a rescan of a million contacts
    # waits about 1.5 s less for the two. The survey needs no database, so a thread can do it.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="survey") as surveyor:
        surveying = surveyor.submit(survey_file, run.source_file)
        # The index's version of every contact, read once: the workers skip a contact the index
        # holds as read (a rescan of an unchanged export writes nothing) or newer (webhooks got there
        # first).
        stamps = load_stamps()
        survey = surveying.result()
    state.writer.ensure_locations(survey.locations)
    scope = set(run.scope)
    if scope and not scope & {loc.uid for loc in survey.locations}:
        logger.warning("scan #%s: the export declares none of %s", run.pk, ", ".join(sorted(scope)))
    file_state: dict[str, Any] = state.checkpoint.setdefault("file", {"line": 0})
    if run.contacts_total is None:
        state.save(contacts_total=survey.contact_lines)
    if not file_state.get("surveyed"):
        with transaction.atomic():
            _record_rejected(state, survey.rejected, source=run.source_file)
            file_state["surveyed"] = True
            state.save(rejected_count=run.rejected_count + len(survey.rejected))
    state.writer.stamps = stamps
    state.writer.bulk = True
    for chunk in iter_prepared_file(
        run.source_file,
        state.writer.regions(),
        state.writer.default_region,
        start_after_line=int(file_state.get("line", 0)),
        known=state.writer.stamps,
        # Workers write their own blocks (PostgreSQL) when every contact of the file is in scope.
        write_with=None if scope else state.writer,
    ):
        items = [p for p in chunk.contacts if not scope or scope.intersection(p.location_uids)]
        # before the write adds what the database refuses
        read = chunk.read
        if not items and not chunk.rejected and chunk.written is None:
            # Nothing to write (a rescan's unchanged contacts): only progress, now and then.
            file_state["line"] = chunk.last_line
            state.save(lazy=True, pages=run.pages + 1, contacts_seen=run.contacts_seen + read)
            state.report()
            continue
        with transaction.atomic():
            if chunk.written is not None:
                result = chunk.written  # the worker that prepared the block wrote it
            else:
                result = write_quarantining(
                    state.writer, items, chunk.rejected, lambda p: (p.line_number, read_line(run.source_file, p.line_number or 0))
                )
            if not state.touched_many:
                state.touched_ids.update(result.contact_ids)
                if len(state.touched_ids) > _FILE_DETECT_CHANGED_MAX:
                    # The whole scope is detected anyway: a million ids is memory for nothing.
                    state.touched_many = True
                    state.touched_ids = set()
            _record_rejected(state, chunk.rejected, source=run.source_file)
            file_state["line"] = chunk.last_line
            for uid, newest in result.max_updated_at.items():
                location_state = state.location_state(uid)
                location_state["mode"] = "file"
                location_state["watermark"] = _newer(location_state.get("watermark"), newest)
            state.save(
                pages=run.pages + 1,
                contacts_seen=run.contacts_seen + read,
                invalid_phones=run.invalid_phones + result.invalid_phones,
                rejected_count=run.rejected_count + len(chunk.rejected),
            )
        state.report()
    state.writer.stamps = None  # a million entries; detection needs the memory more
    for location_state in state.checkpoint["locations"].values():
        location_state["done"] = True
    state.save()


# --- targeted rescans ------------------------------------------------------------------------------------------


def queue_rescan_of_keys(
    natural_keys: list[str], reason: str, actor: str = "system", contact_uids: list[str] | None = None
) -> None:
    """Re-read some contacts from Podium and re-detect their natural keys, as a django-q2 task.

    Used when a member's ``updatedAt`` drifted (``ERR_DEDUP_011``) and after restores. ``contact_uids``
    names the contacts to re-read; without it, every indexed holder of the keys is re-read. Enqueued
    when the caller's transaction commits.
    """
    keys = sorted(set(natural_keys))
    uids = sorted(set(contact_uids or []))
    transaction.on_commit(
        lambda: async_task(
            "dedup.scanning.rescan_keys_task",
            keys,
            reason,
            actor,
            uids,
            task_name="rescan keys",
            group="scans",
        )
    )


def rescan_keys_task(
    natural_keys: list[str], reason: str, actor: str = "system", contact_uids: list[str] | None = None
) -> dict[str, Any]:
    """Re-read the contacts from Podium, re-index them and re-detect their keys.

    A contact Podium's published API cannot address unambiguously is left for the next scan (named
    in the result); one Podium no longer has is marked deleted in the index.
    """
    uids = set(contact_uids or [])
    if not uids and natural_keys:
        uids = set(
            ContactKey.objects.filter(key__in=in_values(natural_keys)).values_list("contact__uid", flat=True)
        )
    writer = IndexWriter(Policy.current().default_region)
    prepared: list[PreparedContact] = []
    rejected: list[RejectedLine] = []
    missing: list[str] = []
    unaddressable: list[str] = []
    live: dict[str, PodiumContact] = {}
    if uids:
        with get_client() as client:
            reads = read_indexed_contacts(client, sorted(uids))
        for uid in sorted(uids):
            outcome = reads.get(uid)
            if outcome is None:
                missing.append(uid)
            elif isinstance(outcome, PodiumContact):
                live[outcome.uid] = outcome
                item = _prepare_or_reject(writer, outcome, rejected)
                if item is not None:
                    prepared.append(item)
            else:
                unaddressable.append(uid)
    with transaction.atomic():
        result = write_quarantining(writer, prepared, rejected, lambda p: (None, _contact_json(live[p.uid])))
        if missing:
            # Podium does not know them at all any more: they must never join a cluster again.
            Contact.objects.filter(uid__in=in_values(missing), deleted_at__isnull=True).update(
                deleted_at=timezone.now(), indexed_at=timezone.now()
            )
        for r in rejected:
            RejectedRecord.objects.create(
                source="podium", contact_uid=r.contact_uid, reason=r.reason, raw=_storable(r.raw)
            )
    missing_ids = list(Contact.objects.filter(uid__in=in_values(missing)).values_list("pk", flat=True))
    summary = detect(keys=natural_keys, contact_ids=[*result.contact_ids, *missing_ids], actor=actor)
    audit.record(
        "scan.keys_rescanned",
        actor=actor,
        contact_uids=sorted(uids),
        natural_keys=natural_keys,
        payload={
            "reason": reason,
            "reread": len(prepared),
            "missing": missing,
            "unaddressable": unaddressable,
            "detection": summary.as_dict(),
        },
    )
    return {
        "reread": len(prepared),
        "missing": missing,
        "unaddressable": unaddressable,
        "detection": summary.as_dict(),
    }


def scheduled_scan() -> dict[str, Any] | None:
    """The periodic task: an incremental scan of every location, unless a scan is already running."""
    try:
        run = start_scan(actor="system:schedule", run_async=False)
    except ConcurrentRunError as exc:
        logger.info("scheduled scan skipped: %s", exc)
        return None
    return {"scanRun": run.pk, "state": run.state, "contacts": run.contacts_seen}
