"""``manage.py api_token create --name N --locations UID... [--json] | list [--json] | revoke ID``.

``create`` prints the token once (it is stored hashed and cannot be shown again). Creation and
revocation are audited (actor ``worker:cli``).
"""

from __future__ import annotations

import json
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from dedup.api_tokens import TokenError, create_token, revoke_token
from dedup.models import ApiToken

ACTOR = "worker:cli"


class Command(BaseCommand):
    help = "Create, list or revoke the lookup API's tokens for integrations."

    def add_arguments(self, parser: CommandParser) -> None:
        sub = parser.add_subparsers(dest="action", required=True)
        create = sub.add_parser("create", help="create a token (printed once)")
        create.add_argument("--name", required=True, help="the integration it is for")
        create.add_argument(
            "--locations", nargs="+", required=True, metavar="UID", help="location uids it may see"
        )
        create.add_argument("--json", action="store_true")
        listing = sub.add_parser("list", help="every token (never the token itself)")
        listing.add_argument("--json", action="store_true")
        revoke = sub.add_parser("revoke", help="revoke a token by its id")
        revoke.add_argument("id", type=int)

    def handle(self, *args: Any, **options: Any) -> None:
        action = options["action"]
        if action == "create":
            self._create(options["name"], options["locations"], options["json"])
        elif action == "list":
            self._list(options["json"])
        else:
            self._revoke(options["id"])

    def _create(self, name: str, locations: list[str], as_json: bool) -> None:
        # Accept "a,b" as well as "a b".
        uids = [uid for item in locations for uid in item.split(",") if uid]
        try:
            issued = create_token(name, uids, actor=ACTOR)
        except TokenError as exc:
            raise CommandError(str(exc)) from exc
        row = issued.row
        if as_json:
            self.stdout.write(
                json.dumps(
                    {"id": row.pk, "name": row.name, "token": issued.token, "locations": row.location_uids}
                )
            )
            return
        self.stdout.write(issued.token)
        self.stderr.write(
            f"token #{row.pk} for {row.name} ({', '.join(row.location_uids)}); shown once, keep it now"
        )

    def _list(self, as_json: bool) -> None:
        rows = [
            {
                "id": t.pk,
                "name": t.name,
                "prefix": t.prefix,
                "locations": t.location_uids,
                "createdAt": t.created_at.isoformat(),
                "revokedAt": t.revoked_at.isoformat() if t.revoked_at else None,
                "lastUsedAt": t.last_used_at.isoformat() if t.last_used_at else None,
            }  # fmt: skip
            for t in ApiToken.objects.order_by("pk")
        ]
        if as_json:
            self.stdout.write(json.dumps(rows))
            return
        if not rows:
            self.stdout.write("no token")
        for r in rows:
            state = f"revoked {r['revokedAt'][:10]}" if r["revokedAt"] else "active"
            self.stdout.write(
                f"#{r['id']:<4} {r['prefix']}…  {r['name']}  [{', '.join(r['locations'])}]  {state}"
            )

    def _revoke(self, token_id: int) -> None:
        row = ApiToken.objects.filter(pk=token_id).first()
        if row is None:
            raise CommandError(f"no token #{token_id}")
        if revoke_token(row, actor=ACTOR):
            self.stdout.write(self.style.SUCCESS(f"token #{row.pk} ({row.name}) revoked"))
        else:
            self.stdout.write(f"token #{row.pk} ({row.name}) was revoked already")
