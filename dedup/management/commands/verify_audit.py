"""``manage.py verify_audit [--checkpoint FILE] [--export-checkpoint FILE]``: check the keyed audit chain.

Exits 1 and names the first broken link when the chain does not hold, when the log is empty, or when a
checkpoint an auditor kept shows that events were removed from the end or the log was rewritten.
``--export-checkpoint`` writes a new signed checkpoint of the head, after verifying (and only if the
chain holds); keep it outside the database, e.g. with the auditor's records.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from dedup import audit
from dedup.audit import Checkpoint, CheckpointError, verify_chain


class Command(BaseCommand):
    help = "Verify the audit log's keyed hash chain; exit 1 and name the first broken event if it does not hold."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--checkpoint", metavar="FILE", type=Path,
            help="a checkpoint exported earlier: also fail if its event is gone or changed, or the log is shorter",
        )
        parser.add_argument(
            "--export-checkpoint", metavar="FILE", type=Path,
            help="after verifying, write a signed checkpoint of the current head to FILE (keep it off this server)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        checkpoint = None
        if options["checkpoint"] is not None:
            try:
                checkpoint = Checkpoint.from_json(options["checkpoint"].read_text(encoding="utf-8"))
            except OSError as exc:
                raise CommandError(f"cannot read the checkpoint {options['checkpoint']}: {exc.strerror}") from None
            except CheckpointError as exc:
                self.stdout.write(f"audit chain NOT VERIFIED: {exc}")
                sys.exit(1)
        status = verify_chain(checkpoint=checkpoint)
        self.stdout.write(status.describe())
        if not status.ok:
            sys.exit(1)
        target = options["export_checkpoint"]
        if target is not None:
            # The export is itself an audited act, and the checkpoint covers its own record.
            audit.record("audit.checkpoint_exported", actor="system", payload={"verifiedEvents": status.checked})
            try:
                written = audit.write_checkpoint(target)
            except OSError as exc:
                raise CommandError(f"cannot write the checkpoint {target}: {exc.strerror}") from None
            self.stdout.write(
                f"checkpoint written to {target}: event #{written.last_id}, {written.count} events, "
                f"key id {written.key_id}. Keep it outside this server's database."
            )
