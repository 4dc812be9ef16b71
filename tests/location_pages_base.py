"""A base for the tests of the locations, rejected-records and scan pages, with the product's named people.

It follows ``tests/dashboard_base.py``'s conventions (a manager of Sydney, a manager of Burleigh Heads, an
auditor, an admin; every view checks the manager may or gets 404/403, the auditor gets 403 on writes,
anonymous is sent to sign in, a POST without a CSRF token is refused) but builds its data with the ORM
and the real indexer alone, so it does not depend on the shared dashboard base while that is rewritten
for the v4 shapes. The locations: Sydney and Burleigh (Podium gives AU), and a pop-up van Podium gives
no country.
"""

from __future__ import annotations

from typing import Any

from django.contrib.auth.models import Group, User
from django.test import Client, TestCase

from dedup.indexing import IndexWriter
from dedup.models import Location, LocationGrant
from dedup.roles import ROLE_NAMES
from podium_client import Location as PodiumLocation

PASSWORD = "correct-horse-battery-staple"
SYDNEY = "loc_sydney"
BURLEIGH = "loc_burleigh"
POPUP = "loc_popup"
PODIUM_LOCATIONS = [
    PodiumLocation(SYDNEY, "Sydney CBD", "AU"),
    PodiumLocation(BURLEIGH, "Burleigh Heads", "AU"),
    PodiumLocation(POPUP, "Pop-up Van", None),
]


def make_user(username: str, role: str, locations: list[Location] | None = None) -> User:
    user = User.objects.create_user(username=username, password=PASSWORD, is_staff=role == "admin")
    user.groups.add(Group.objects.get(name=ROLE_NAMES[role]))
    for location in locations or []:
        LocationGrant.objects.create(user=user, location=location)
    return user


class LocationPagesTestCase(TestCase):
    sydney: Location
    burleigh: Location
    popup: Location
    sydney_manager: User
    burleigh_manager: User
    auditor: User
    admin: User

    @classmethod
    def setUpTestData(cls) -> None:
        IndexWriter("AU").ensure_locations(PODIUM_LOCATIONS)
        cls.sydney = Location.objects.get(uid=SYDNEY)
        cls.burleigh = Location.objects.get(uid=BURLEIGH)
        cls.popup = Location.objects.get(uid=POPUP)
        cls.sydney_manager = make_user("sydney_manager", "manager", [cls.sydney])
        cls.burleigh_manager = make_user("burleigh_manager", "manager", [cls.burleigh])
        cls.auditor = make_user("auditor", "auditor")
        cls.admin = make_user("admin", "admin")

    def login(self, user: User) -> None:
        self.client.force_login(user)

    def csrf_client(self, user: User) -> Client:
        """A client that enforces CSRF like a browser would, signed in as ``user``."""
        client = Client(enforce_csrf_checks=True)
        client.force_login(user)
        return client

    def assert_login_redirect(self, response: Any) -> None:
        assert response.status_code == 302, response.status_code
        assert response["Location"].startswith("/accounts/login/?next="), response["Location"]
