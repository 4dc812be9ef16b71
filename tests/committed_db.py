"""The ``committed_db`` fixture: a database whose writes other threads and processes see (``transaction=True``).

The role groups (a data migration's rows) are there, as after ``migrate``.

Such a test's data is removed afterwards by a flush, which on PostgreSQL TRUNCATEs every table; the
audit log refuses TRUNCATE (migration 0002), so the guard is lifted for that flush only and put back
when it ends (a flush emits ``post_migrate``). Register with ``pytest_plugins = ["tests.committed_db"]``.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.audit_guard import lift_for_the_flush


def _ensure_roles() -> None:
    """The role groups a data migration created: an earlier test's flush removed them."""
    from django.contrib.auth.models import Group, Permission

    from dedup.roles import ROLE_PERMISSIONS

    for role, perms in ROLE_PERMISSIONS.items():
        group, created = Group.objects.get_or_create(name=role)
        if created:
            for dotted in perms:
                app_label, codename = dotted.split(".")
                group.permissions.add(Permission.objects.get(content_type__app_label=app_label, codename=codename))


@pytest.fixture
def committed_db(transactional_db: None) -> Iterator[None]:
    _ensure_roles()
    yield
    lift_for_the_flush()
