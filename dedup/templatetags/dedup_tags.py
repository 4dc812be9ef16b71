"""Small template helpers for the dashboard: the user's role, durations, percentages, state badges."""

from __future__ import annotations

from typing import Any

from django import template

from dedup import access
from dedup.models import MergeOperation, ScanRun

register = template.Library()

_ROLE_LABELS = {access.ROLE_ADMIN: "Admin", access.ROLE_MANAGER: "Manager", access.ROLE_AUDITOR: "Auditor"}

_STATE_TONES = {
    MergeOperation.PATCHED: "ok",
    MergeOperation.MERGED: "busy",
    MergeOperation.MERGING: "busy",
    MergeOperation.PENDING: "busy",
    MergeOperation.COMPLIANCE_FAILED: "danger",
    MergeOperation.UNRECONCILABLE: "danger",
    MergeOperation.CONFLICT_PENDING: "warn",
    MergeOperation.RE_INDEX_REQUIRED: "warn",
    MergeOperation.FAILED_PERMANENT: "muted",
    ScanRun.SUCCEEDED: "ok",
    ScanRun.RUNNING: "busy",
    ScanRun.QUEUED: "busy",
    ScanRun.FAILED: "danger",
    "open": "busy",
    "approved": "busy",
    "merged": "ok",
    "rejected": "muted",
    "superseded": "muted",
    "auto": "ok",
    "review": "warn",
    "cross": "info",
}


@register.simple_tag
def user_role(user: Any) -> str:
    """The role's label, e.g. "Manager", or "No role"."""
    role = access.role_of(user)
    return _ROLE_LABELS.get(role or "", "No role")


@register.simple_tag
def user_scope(user: Any) -> str:
    """"All locations" or the number of granted locations."""
    ids = access.visible_location_ids(user)
    if ids is None:
        return "all locations"
    return f"{len(ids)} location{'s' if len(ids) != 1 else ''}"


@register.filter
def tone(state: str) -> str:
    """The badge colour class for a state or kind."""
    return _STATE_TONES.get(str(state), "muted")


@register.filter
def percent(value: float | None, digits: int = 0) -> str:
    if value is None:
        return "—"
    return f"{float(value) * 100:.{int(digits)}f}%"


@register.filter
def percent_width(value: float | None) -> str:
    """A CSS-safe 0..100 number for a progress bar's width."""
    if value is None:
        return "0"
    return f"{max(0.0, min(float(value), 1.0)) * 100:.1f}"


@register.filter
def duration(seconds: float | None) -> str:
    """"3 min 20 s", "1 h 05 min", or "—"."""
    if seconds is None:
        return "—"
    total = int(round(float(seconds)))
    if total < 60:
        return f"{total} s"
    minutes, secs = divmod(total, 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


@register.filter
def actor_name(actor: str) -> str:
    """``user:maria`` → ``maria``; ``worker:merge-1`` → ``merge-1 (worker)``."""
    kind, _, name = str(actor).partition(":")
    if kind == "user":
        return name
    if kind == "worker":
        return f"{name} (worker)"
    return str(actor)



@register.filter
def cluster_url(ref: str) -> str:
    """The page of a cluster named by its stable id (as the audit log names it), or "" for anything else."""
    from django.urls import NoReverseMatch, reverse

    if not ref:
        return ""
    try:
        return reverse("cluster_detail", args=[ref])
    except NoReverseMatch:
        return ""
