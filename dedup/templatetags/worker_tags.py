"""``{% worker_status %}``: the workers' heartbeats and the queue depth, for the Scans page."""

from __future__ import annotations

from typing import Any

from django import template

from dedup.heartbeat import stale_after
from dedup.heartbeat import worker_status as read_worker_status

register = template.Library()


@register.inclusion_tag("workers/_status.html")
def worker_status() -> dict[str, Any]:
    """Live workers by host with the task in hand, silent ones, and how many tasks wait in the queue."""
    status = read_worker_status()
    return {"status": status, "stale_seconds": int(stale_after().total_seconds())}
