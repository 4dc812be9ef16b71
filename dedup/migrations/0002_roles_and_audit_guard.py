"""Create the Manager, Auditor and Admin groups; on PostgreSQL, forbid UPDATE/DELETE of audit events."""

from __future__ import annotations

from typing import Any

from django.db import migrations

AUDIT_TRIGGER = """
CREATE OR REPLACE FUNCTION dedup_audit_append_only() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION 'audit events are append-only (%% refused)', TG_OP;
END;
$$ LANGUAGE plpgsql;
DROP TRIGGER IF EXISTS dedup_audit_append_only ON dedup_auditevent;
CREATE TRIGGER dedup_audit_append_only BEFORE UPDATE OR DELETE ON dedup_auditevent
    FOR EACH ROW EXECUTE FUNCTION dedup_audit_append_only();
DROP TRIGGER IF EXISTS dedup_audit_no_truncate ON dedup_auditevent;
CREATE TRIGGER dedup_audit_no_truncate BEFORE TRUNCATE ON dedup_auditevent
    FOR EACH STATEMENT EXECUTE FUNCTION dedup_audit_append_only();
"""
DROP_AUDIT_TRIGGER = """
DROP TRIGGER IF EXISTS dedup_audit_append_only ON dedup_auditevent;
DROP TRIGGER IF EXISTS dedup_audit_no_truncate ON dedup_auditevent;
DROP FUNCTION IF EXISTS dedup_audit_append_only();
"""


def create_roles(apps: Any, schema_editor: Any) -> None:
    from django.contrib.auth.management import create_permissions

    from dedup.roles import ROLE_PERMISSIONS

    # Permissions are normally created after all migrations; the groups need them now.
    for app_config in apps.get_app_configs():
        app_config.models_module = True
        create_permissions(app_config, apps=apps, verbosity=0)
        app_config.models_module = None
    Group = apps.get_model("auth", "Group")
    Permission = apps.get_model("auth", "Permission")
    for role, perms in ROLE_PERMISSIONS.items():
        group, _ = Group.objects.get_or_create(name=role)
        for dotted in perms:
            app_label, codename = dotted.split(".")
            group.permissions.add(Permission.objects.get(content_type__app_label=app_label, codename=codename))


def remove_roles(apps: Any, schema_editor: Any) -> None:
    from dedup.roles import ROLE_PERMISSIONS

    apps.get_model("auth", "Group").objects.filter(name__in=list(ROLE_PERMISSIONS)).delete()


def add_audit_trigger(apps: Any, schema_editor: Any) -> None:
    if schema_editor.connection.vendor == "postgresql":
        # execute() would treat '%' as a placeholder; the function body has none to fill.
        with schema_editor.connection.cursor() as cursor:
            cursor.execute(AUDIT_TRIGGER.replace('%%', '%'))


def drop_audit_trigger(apps: Any, schema_editor: Any) -> None:
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(DROP_AUDIT_TRIGGER)


class Migration(migrations.Migration):
    dependencies = [
        ("dedup", "0001_initial"),
        ("auth", "0012_alter_user_first_name_max_length"),
        ("contenttypes", "0002_remove_content_type_name"),
    ]

    operations = [
        migrations.RunPython(create_roles, remove_roles),
        migrations.RunPython(add_audit_trigger, drop_audit_trigger),
    ]
