"""``manage.py scan [--location UID ...] [--from-file FILE.ndjson] [--full]``: index contacts, detect clusters.

Runs inline (the same code as the background job) and shows progress: a live bar on a terminal, a
plain line every few seconds otherwise (logs, CI). Exits 1 with the reason and what to do when another
scan holds the scope (``ERR_DEDUP_014``), the file is unreadable or empty, or Podium is unreachable.
Exits 2 when the scan completed but set records aside ("completed with N rejected"): the rest is
indexed, and an admin finds each rejected record, its reason and its raw text on the dashboard.
"""

from __future__ import annotations

import time
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.urls import reverse

from dedup.models import ScanRun
from dedup.scanning import ConcurrentRunError, ScanError, describe_scope, start_scan

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

        locations = options["location"] or None
        try:
            run = start_scan(
                locations=locations,
                full=options["full"],
                from_file=options["from_file"],
                actor="cli",
                run_async=False,
                progress_callback=progress,
            )
        except ConcurrentRunError as exc:
            raise CommandError(str(exc)) from None
        except ScanError as exc:
            if tty:
                self.stdout.write("")
            raise CommandError(str(exc)) from None
        if tty:
            self.stdout.write("")
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
