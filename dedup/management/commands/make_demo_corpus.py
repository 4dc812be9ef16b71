"""``manage.py make_demo_corpus OUT.ndjson --people N [--seed S]``: write a demo export and its truth."""

from __future__ import annotations

import time
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from podium_client.corpus import truth_path_for, write_corpus


class Command(BaseCommand):
    help = (
        "Generate a deterministic demo corpus (Podium v4 export NDJSON) with real-life mess, and its ground truth "
        "as OUT.truth.json beside it."
    )
    requires_system_checks: list[str] = []

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("out", metavar="OUT.ndjson")
        parser.add_argument("--people", type=int, default=3000, help="number of real people (default 3000)")
        parser.add_argument("--seed", type=int, default=2026, help="random seed (default 2026)")

    def handle(self, *args: Any, **options: Any) -> None:
        if options["people"] < 1:
            raise CommandError("--people must be at least 1")
        started = time.monotonic()
        summary = write_corpus(options["out"], options["people"], options["seed"])
        if options["verbosity"] >= 1:
            kinds = ", ".join(f"{k}={v}" for k, v in sorted(summary.kinds.items()))
            self.stdout.write(
                f"wrote {summary.contacts} contacts of {summary.people} people to {options['out']} "
                f"(truth: {truth_path_for(options['out'])}) in {time.monotonic() - started:.1f}s"
            )
            self.stdout.write(f"mess: {kinds}")
