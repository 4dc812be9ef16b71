"""`manage.py create_user`: one user per role, grants by location uid, clear errors."""

from __future__ import annotations

from io import StringIO

import pytest
from django.contrib.auth.models import User
from django.core.management import CommandError, call_command

from dedup import access
from dedup.models import AuditEvent, Location, LocationGrant

pytestmark = pytest.mark.django_db
PASSWORD = "a-long-enough-passphrase"


@pytest.fixture
def locations() -> list[Location]:
    return [
        Location.objects.create(uid="loc_sydney", name="Sydney CBD"),
        Location.objects.create(uid="loc_burleigh", name="Burleigh Heads"),
    ]


def run(*args: str) -> str:
    out = StringIO()
    call_command("create_user", *args, stdout=out)
    return out.getvalue()


def test_a_manager_gets_the_group_and_the_grants(locations: list[Location]) -> None:
    output = run("maria", "--role", "manager", "--locations", "loc_sydney,loc_burleigh", "--password", PASSWORD)
    assert "Created manager maria (loc_burleigh, loc_sydney)" in output
    user = User.objects.get(username="maria")
    assert user.check_password(PASSWORD)
    assert not user.is_staff
    assert access.role_of(user) == "manager"
    assert set(LocationGrant.objects.filter(user=user).values_list("location__uid", flat=True)) == {
        "loc_sydney", "loc_burleigh"
    }
    assert user.has_perm("dedup.approve_cluster") and not user.has_perm("dedup.restore_contact")
    assert AuditEvent.objects.filter(event_type="user.created").count() == 1


def test_an_admin_can_open_the_django_admin(locations: list[Location]) -> None:
    run("root", "--role", "admin", "--password", PASSWORD)
    user = User.objects.get(username="root")
    assert user.is_staff and not user.is_superuser
    assert user.has_perm("dedup.restore_contact")


def test_running_again_updates_role_and_grants(locations: list[Location]) -> None:
    run("sam", "--role", "manager", "--locations", "loc_sydney", "--password", PASSWORD)
    output = run("sam", "--role", "auditor", "--locations", "loc_burleigh", "--password", PASSWORD)
    assert output.startswith("Updated auditor sam")
    user = User.objects.get(username="sam")
    assert list(user.groups.values_list("name", flat=True)) == ["Auditor"]
    assert list(LocationGrant.objects.filter(user=user).values_list("location__uid", flat=True)) == ["loc_burleigh"]


def test_an_unknown_role_is_refused(locations: list[Location]) -> None:
    with pytest.raises(CommandError, match="Unknown role 'boss': use one of admin, auditor, manager"):
        run("x", "--role", "boss", "--password", PASSWORD)
    assert not User.objects.filter(username="x").exists()


def test_an_unknown_location_is_refused_and_the_known_ones_listed(locations: list[Location]) -> None:
    with pytest.raises(CommandError, match="Unknown location: loc_mars. Known locations: loc_burleigh, loc_sydney"):
        run("x", "--role", "manager", "--locations", "loc_sydney,loc_mars", "--password", PASSWORD)
    assert not User.objects.filter(username="x").exists()


def test_a_weak_password_is_refused(locations: list[Location]) -> None:
    with pytest.raises(CommandError, match="Password refused"):
        run("x", "--role", "auditor", "--password", "123")


def test_the_password_can_come_from_the_environment(locations: list[Location], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEDUP_USER_PASSWORD", PASSWORD)
    run("envy", "--role", "auditor")
    assert User.objects.get(username="envy").check_password(PASSWORD)
