"""``manage.py create_user NAME --role manager|auditor|admin [--locations UID,UID] --password P``.

Creates (or updates) a dashboard user in one role group with grants to the named locations. Admins also
get ``is_staff`` so they can open the Django admin. Unknown roles and locations are refused with the list
of what exists, before anything is written.
"""

from __future__ import annotations

import os
from typing import Any

from django.contrib.auth import get_user_model, password_validation
from django.contrib.auth.models import Group
from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import transaction

from dedup import audit
from dedup.models import Location, LocationGrant
from dedup.roles import ADMIN, ROLE_NAMES


class Command(BaseCommand):
    help = "Create or update a dashboard user with a role (manager, auditor, admin) and location grants."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("username")
        parser.add_argument("--role", required=True, help="manager, auditor or admin")
        parser.add_argument(
            "--locations",
            default="",
            help="comma-separated location uids the user may see (managers act on these; auditors with none "
            "see every location; admins always see all)",
        )
        parser.add_argument(
            "--password",
            default=None,
            help="the password (or set DEDUP_USER_PASSWORD so it stays out of the shell history)",
        )
        parser.add_argument(
            "--skip-password-check", action="store_true", help="accept a password the validators would refuse"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        username = str(options["username"]).strip()
        if not username:
            raise CommandError("The username cannot be blank.")
        role_key = str(options["role"]).strip().lower()
        if role_key not in ROLE_NAMES:
            raise CommandError(f"Unknown role {options['role']!r}: use one of {', '.join(sorted(ROLE_NAMES))}.")
        group_name = ROLE_NAMES[role_key]
        group = Group.objects.filter(name=group_name).first()
        if group is None:
            raise CommandError(f"The {group_name} group does not exist: run `manage.py migrate` first.")

        uids = [u.strip() for u in str(options["locations"]).split(",") if u.strip()]
        locations = list(Location.objects.filter(uid__in=uids))
        missing = sorted(set(uids) - {loc.uid for loc in locations})
        if missing:
            known = list(Location.objects.order_by("uid").values_list("uid", flat=True)[:20])
            hint = f" Known locations: {', '.join(known)}." if known else " No location exists yet: run a scan first."
            raise CommandError(f"Unknown location{'s' if len(missing) > 1 else ''}: {', '.join(missing)}.{hint}")

        password = options["password"] or os.environ.get("DEDUP_USER_PASSWORD")
        if not password:
            raise CommandError("Give a password with --password or the DEDUP_USER_PASSWORD environment variable.")

        User = get_user_model()
        user = User.objects.filter(username=username).first()
        created = user is None
        if user is None:
            user = User(username=username)
        if not options["skip_password_check"]:
            try:
                password_validation.validate_password(password, user)
            except ValidationError as exc:
                raise CommandError("Password refused: " + " ".join(exc.messages)) from exc

        with transaction.atomic():
            user.set_password(password)
            user.is_active = True
            user.is_staff = group_name == ADMIN
            user.save()
            user.groups.set([group])
            LocationGrant.objects.filter(user=user).exclude(location__in=locations).delete()
            for loc in locations:
                LocationGrant.objects.get_or_create(user=user, location=loc)
            audit.record(
                "user.created" if created else "user.updated",
                actor="system",
                location_uids=[loc.uid for loc in locations],
                payload={"username": username, "role": role_key, "locations": sorted(loc.uid for loc in locations)},
            )

        scope = ", ".join(sorted(loc.uid for loc in locations)) or (
            "all locations" if role_key in ("admin", "auditor") else "no location yet"
        )
        self.stdout.write(f"{'Created' if created else 'Updated'} {role_key} {username} ({scope}).")
