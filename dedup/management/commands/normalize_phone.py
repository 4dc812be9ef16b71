"""``manage.py normalize_phone PHONE [PHONE ...] --region AU [--json]``."""

from __future__ import annotations

import json
import sys
from typing import Any

import phonenumbers
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from dedup.phones import normalize_phone


class Command(BaseCommand):
    help = "Normalize phone numbers to E.164 natural keys, or say why they cannot be used."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("phones", nargs="+", metavar="PHONE")
        parser.add_argument("--region", default=None, help="default region for national numbers (ISO 3166 alpha-2)")
        parser.add_argument("--json", action="store_true", help="print JSON (one object per number)")

    def handle(self, *args: Any, **options: Any) -> None:
        region = (options["region"] or settings.PODIUM_DEFAULT_REGION).upper()
        if region not in phonenumbers.SUPPORTED_REGIONS:
            raise CommandError(f"unknown region {region!r}: use an ISO 3166 alpha-2 code such as AU or NZ")
        results = [normalize_phone(raw, region) for raw in options["phones"]]
        for result in results:
            if options["json"]:
                self.stdout.write(json.dumps(result.as_dict(), ensure_ascii=False))
            elif result.valid:
                ext = f" ext. {result.extension}" if result.extension else ""
                self.stdout.write(f"{result.raw!r}\t{result.e164}{ext}\t{result.national}\t{result.country}")
            else:
                self.stdout.write(f"{result.raw!r}\t{result.code} {result.error_name}: {result.reason}")
        if not all(r.valid for r in results):
            sys.exit(1)
