"""``manage.py podium_webhook register --url https://HOST/podium/webhooks/ | status | unregister``.

``register`` creates the organization webhook for every contact event through ``POST /v4/webhooks``
(replacing an earlier one), with ``PODIUM_WEBHOOK_SECRET`` when set, else a generated secret stored
encrypted. ``status`` shows it here and at Podium, and the last day's deliveries. The secret is never
printed or logged.
"""

from __future__ import annotations

import json
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from dedup.realtime import registration
from dedup.realtime.secrets import key_source
from podium_client.errors import PodiumError


class Command(BaseCommand):
    help = "Register, inspect or remove the Podium webhook that keeps the index current between scans."

    def add_arguments(self, parser: CommandParser) -> None:
        sub = parser.add_subparsers(dest="action", required=True)
        reg = sub.add_parser("register", help="create the webhook at Podium (replaces an earlier one)")
        reg.add_argument("--url", required=True, help="https://HOST/podium/webhooks/")
        reg.add_argument(
            "--organization", help="organization uid (default: the one Podium names for the locations)"
        )
        status = sub.add_parser("status", help="the webhook here and at Podium, and its last day")
        status.add_argument("--json", action="store_true")
        sub.add_parser("unregister", help="remove the webhook at Podium")

    def handle(self, *args: Any, **options: Any) -> None:
        action = options["action"]
        try:
            if action == "register":
                self._register(options["url"], options.get("organization"))
            elif action == "status":
                self._status(options["json"])
            else:
                self._unregister()
        except registration.RegistrationError as exc:
            raise CommandError(str(exc)) from exc

    def _register(self, url: str, organization: str | None) -> None:
        reg = registration.register(url, actor="worker:cli", organization_uid=organization)
        secret = (
            "from PODIUM_WEBHOOK_SECRET"
            if reg.secret_source == reg.ENVIRONMENT
            else f"generated, stored encrypted (key derived from {key_source()})"
        )
        self.stdout.write(self.style.SUCCESS(f"registered webhook {reg.podium_uid} → {reg.url}"))
        self.stdout.write(f"events: {', '.join(reg.event_types)}; secret {secret}")

    def _status(self, as_json: bool) -> None:
        podium_error = ""
        try:
            registration.refresh_from_podium()
        except PodiumError as exc:
            podium_error = str(exc)
        state = registration.health()
        reg = state.registration
        out: dict[str, Any] = {
            "registered": reg is not None,
            "podiumUid": reg.podium_uid if reg else None,
            "url": reg.url if reg else None,
            "podiumState": reg.podium_state if reg else None,
            "checkedAt": reg.checked_at.isoformat() if reg and reg.checked_at else None,
            "secretSource": reg.secret_source if reg else None,
            "secretProblem": state.secret_problem or None,
            "podiumError": podium_error or None,
            "lastDelivery": (
                {**state.last_delivery, "received_at": state.last_delivery["received_at"].isoformat()}
                if state.last_delivery
                else None
            ),
            "last24h": {"byStatus": state.by_status, "refused": state.refusals, "failures": state.failures},
            "pending": state.pending,
        }
        if as_json:
            self.stdout.write(json.dumps(out, indent=2, default=str))
            return
        if reg is None:
            self.stdout.write("no webhook registered: contact changes arrive with the scheduled scans only")
        else:
            self.stdout.write(
                f"webhook {reg.podium_uid} → {reg.url}: {reg.get_podium_state_display()} at Podium"
            )
            self.stdout.write(f"secret: {reg.get_secret_source_display()}")
        if state.secret_problem:
            self.stdout.write(self.style.ERROR(state.secret_problem))
        if podium_error:
            self.stdout.write(self.style.WARNING(f"Podium could not be asked: {podium_error}"))
        last = state.last_delivery
        self.stdout.write(
            f"last delivery: {last['received_at']:%Y-%m-%d %H:%M:%S} {last['event_type']} {last['status']}"
            if last
            else "last delivery: none"
        )
        self.stdout.write(
            f"last 24 h: {state.deliveries} delivered ({state.failures} failed), {state.refused} refused; "
            f"{state.pending} waiting"
        )

    def _unregister(self) -> None:
        reg = registration.unregister(actor="worker:cli")
        if reg is None:
            self.stdout.write("no webhook was registered")
            return
        self.stdout.write(self.style.SUCCESS(f"removed webhook {reg.podium_uid}"))
