"""``manage.py podium_probe [--json] [--contact-pages N]``: will the configured Podium tenant work?

The first thing to run against a new tenant. Read-only (see ``podium_client.probe`` for what it calls and
why nothing can change): token and scopes, every location and the first pages of contacts held to
Podium's documents, the Part 2 capabilities the tenant answers against ``PODIUM_CAPABILITIES``, latency
and the rate budget. Prints one screen (or ``--json``); exits 2 when something would stop the product.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import DatabaseError

from dedup.podium import get_client
from podium_client.probe import INFO, PUBLISHED_PER_MINUTE, Check, TenantProbe

NOT_READY = 2


def _from_database() -> tuple[int, dict[str, str], str | None]:
    """(the policy's request budget, regions admins set per location uid, a note when the database cannot say).

    Only reads: the probe is the first thing a deployer runs, possibly before ``migrate``.
    """
    from dedup.models import Location, Policy

    try:
        budget = Policy.objects.filter(pk=1).values_list("rate_limit_per_minute", flat=True).first()
        overrides = dict(Location.objects.exclude(region_override="").values_list("uid", "region_override"))
    except DatabaseError as exc:
        note = f"the database cannot be read yet ({type(exc).__name__}); Podium's published budget is assumed"
        return PUBLISHED_PER_MINUTE, {}, note
    return budget or PUBLISHED_PER_MINUTE, overrides, None


class Command(BaseCommand):
    help = "Probe the configured Podium tenant, read-only, and say whether the product will work with it."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--json", action="store_true", help="print the report as JSON")
        parser.add_argument(
            "--contact-pages", type=int, default=3, metavar="N",
            help="how many pages of 100 contacts to read and check (default 3)",
        )  # fmt: skip

    def handle(self, *args: Any, **options: Any) -> None:
        if options["contact_pages"] < 1:
            raise CommandError("--contact-pages must be at least 1")
        budget, overrides, note = _from_database()
        if settings.PODIUM_REFRESH_TOKEN:
            auth = f"OAuth refresh token via {settings.PODIUM_TOKEN_URL}"
        elif settings.PODIUM_ACCESS_TOKEN:
            auth = "static token"
        else:
            raise CommandError(
                "no Podium credentials: set PODIUM_ACCESS_TOKEN, or PODIUM_TOKEN_URL, PODIUM_CLIENT_ID, "
                "PODIUM_CLIENT_SECRET and PODIUM_REFRESH_TOKEN"
            )
        # Few retries: a probe should answer quickly, and a flaky tenant is itself worth seeing.
        with get_client(requests_per_minute=budget, max_retries=2) as client:
            report = TenantProbe(
                client,
                api_version=settings.PODIUM_API_VERSION,
                auth=auth,
                declared_capabilities=settings.PODIUM_CAPABILITIES,
                declared_scopes=settings.PODIUM_SCOPES,
                budget_per_minute=budget,
                contact_pages=options["contact_pages"],
                region_overrides=overrides,
                default_region=settings.PODIUM_DEFAULT_REGION,
            ).run()
        if note:
            report.checks.append(Check("database", INFO, note))
        if options["json"]:
            self.stdout.write(json.dumps(report.to_json(), indent=2, ensure_ascii=False))
        else:
            self.stdout.write(report.render())
        if not report.ok:
            sys.exit(NOT_READY)
