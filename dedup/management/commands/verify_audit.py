"""``manage.py verify_audit``: check the audit hash chain and name the first broken link."""

from __future__ import annotations

import sys
from typing import Any

from django.core.management.base import BaseCommand

from dedup.audit import verify_chain


class Command(BaseCommand):
    help = "Verify the audit log's hash chain; exit 1 and name the first broken event if it does not hold."

    def handle(self, *args: Any, **options: Any) -> None:
        status = verify_chain()
        self.stdout.write(status.describe())
        if not status.ok:
            sys.exit(1)
