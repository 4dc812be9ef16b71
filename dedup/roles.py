"""The three roles and the permissions each carries. Used by the roles data migration and the tests."""

from __future__ import annotations

MANAGER = "Manager"
AUDITOR = "Auditor"
ADMIN = "Admin"
ROLE_NAMES = {"manager": MANAGER, "auditor": AUDITOR, "admin": ADMIN}

_VIEW_ALL = [
    "dedup.view_location",
    "dedup.view_contact",
    "dedup.view_cluster",
    "dedup.view_clustermember",
    "dedup.view_mergeoperation",
    "dedup.view_scanrun",
    "dedup.view_uncategorizedphone",
    "dedup.view_auditevent",
    "dedup.view_reviewdecision",
    "dedup.view_policy",
]

ROLE_PERMISSIONS: dict[str, list[str]] = {
    MANAGER: [*_VIEW_ALL, "dedup.approve_cluster", "dedup.reject_cluster", "dedup.run_scan"],
    AUDITOR: [*_VIEW_ALL, "dedup.export_audit"],
    ADMIN: [
        *_VIEW_ALL,
        "dedup.approve_cluster",
        "dedup.reject_cluster",
        "dedup.run_scan",
        "dedup.export_audit",
        "dedup.restore_contact",
        "dedup.retry_operation",
        "dedup.resolve_operation",
        "dedup.change_settings",
        "dedup.add_locationgrant",
        "dedup.change_locationgrant",
        "dedup.delete_locationgrant",
        "dedup.view_locationgrant",
        "auth.view_user",
        "auth.add_user",
        "auth.change_user",
    ],
}
