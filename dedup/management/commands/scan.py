"""``manage.py scan [--location UID ...] [--from-file FILE.ndjson] [--full]``: index contacts, detect clusters.

Runs inline (the same code as the background job) and shows progress: a live bar on a terminal, a
plain line every few seconds otherwise (logs, CI). ``--queue`` hands the scan to the background workers
instead and follows it the same way until it ends (a scan whose worker died is followed into the run
that continues it); ``--no-wait`` returns once it is queued. Exits 1 with the reason and what to do
when another scan holds the scope (``ERR_DEDUP_014``), the file is unreadable or empty, Podium is
unreachable, or the queued scan did not succeed (``--timeout`` passed). Exits 2 when the scan
completed but set records aside ("completed with N rejected"): the rest is indexed, and an admin finds
each rejected record, its reason and its raw text on the dashboard.
"""

from __future__ import annotations

import time
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.urls import reverse

from dedup.heartbeat import worker_status
from dedup.models import ScanRun
from dedup.scanning import ConcurrentRunError, ScanError, describe_scope, start_scan
from dedup.workqueue import follow_scan

_BAR_WIDTH = 28
_PLAIN_EVERY_SECONDS = 5.0


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "--:--"
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


def progress_text(run: ScanRun, bar: bool) -> str:
    """One progress line: counts, rate and ETA (with a bar when ``bar``)."""
    total = run.contacts_total
    seen = f"{run.contacts_seen:,}" + (f"/{total:,}" if total else "")
    fraction = run.progress
    parts = [f"scan #{run.pk}"]
    if bar and fraction is not None:
        filled = int(round(fraction * _BAR_WIDTH))
        parts.append("[" + "#" * filled + "-" * (_BAR_WIDTH - filled) + f"] {fraction:4.0%}")
    elif fraction is not None:
        parts.append(f"{fraction:.0%}")
    parts.append(f"{seen} contacts")
    parts.append(f"{run.pages:,} pages")
    parts.append(f"{run.rate:,.0f}/s")
    if total:
        parts.append(f"ETA {_duration(run.eta_seconds)}")
    parts.append(f"{run.invalid_phones:,} invalid phones")
    return " · ".join(parts)


class Command(BaseCommand):
    help = "Scan Podium (or an NDJSON export) into the contact index, then detect duplicate clusters."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--location", action="append", default=[], metavar="UID", help="scan only this location (repeatable)"
        )
        parser.add_argument("--from-file", metavar="FILE", help="index an NDJSON export instead of calling Podium")
        parser.add_argument("--full", action="store_true", help="re-read every contact, not only changes")
        parser.add_argument("--queue", action="store_true", help="hand the scan to the background workers and follow it")
        parser.add_argument("--no-wait", action="store_true", help="with --queue: return once the scan is queued")
        parser.add_argument(
            "--timeout", type=float, metavar="SECONDS", help="with --queue: stop following after this long (exit 1)"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        tty = self.stdout.isatty()
        last_plain = [0.0]

        def progress(run: ScanRun) -> None:
            if tty:
                self.stdout.write("\r" + progress_text(run, bar=True), ending="")
                self.stdout.flush()
            elif time.monotonic() - last_plain[0] >= _PLAIN_EVERY_SECONDS:
                last_plain[0] = time.monotonic()
                self.stdout.write(progress_text(run, bar=False))

        if (options["no_wait"] or options["timeout"] is not None) and not options["queue"]:
            raise CommandError("--no-wait and --timeout go with --queue")
        locations = options["location"] or None
        try:
            run = start_scan(
                locations=locations,
                full=options["full"],
                from_file=options["from_file"],
                actor="cli",
                run_async=options["queue"],
                progress_callback=progress,
            )
        except ConcurrentRunError as exc:
            raise CommandError(str(exc)) from None
        except ScanError as exc:
            if tty:
                self.stdout.write("")
            raise CommandError(str(exc)) from None
        if options["queue"]:
            if options["no_wait"]:
                self.stdout.write(f"scan #{run.pk} queued for the workers; follow it on the dashboard's Scans page")
                return
            if not worker_status().live:
                self.stderr.write(
                    "no background worker is alive (no heartbeat): the scan waits in the queue until one starts "
                    "(`python manage.py qcluster`)"
                )
            run = follow_scan(run.pk, progress, timeout=options["timeout"])
        if tty:
            self.stdout.write("")
        if options["queue"] and run.state != ScanRun.SUCCEEDED:
            self.stdout.write(progress_text(run, bar=False))
            if run.is_active:
                raise CommandError(
                    f"scan #{run.pk} is still {run.state} after {options['timeout']:g} s (--timeout); the workers "
                    "carry on with it"
                )
            raise CommandError(f"scan #{run.pk} {run.state}: {run.error_code} {run.error_message}".rstrip())
        self.stdout.write(progress_text(run, bar=False))
        rate = f"{run.duplicate_rate:.1%}" if run.duplicate_rate is not None else "n/a"
        outcome = f"completed with {run.rejected_count:,} rejected" if run.rejected_count else run.state
        summary = (
            f"scan #{run.pk} {outcome} ({run.kind}, {describe_scope(run.scope)}) in "
            f"{_duration(run.elapsed_seconds)}: {run.contacts_seen:,} contacts, {run.invalid_phones:,} "
            f"invalid phones; {run.clusters_found:,} open clusters ({run.auto_clusters:,} auto-mergeable); "
            f"duplicate rate {rate}"
        )
        if not run.rejected_count:
            self.stdout.write(self.style.SUCCESS(summary))
            return
        self.stdout.write(self.style.WARNING(summary))
        raise CommandError(
            f"scan #{run.pk} completed with {run.rejected_count:,} rejected record(s), set aside unindexed; "
            f"an admin sees each one, why and its raw text at {reverse('rejected_records')}?scan={run.pk}",
            returncode=2,
        )
