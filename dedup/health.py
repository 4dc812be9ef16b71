"""The liveness probes: ``/healthz`` (the database answers) and ``/healthz?workers=1`` (a worker is alive too).

``/healthz`` answers 200 while the database answers, 503 when it does not: point the web server's
load balancer at it. ``/healthz?workers=1`` also answers 503 when no background worker has beaten
within ``WORKER_STALE_SECONDS`` (``dedup.heartbeat``) or the queue cannot be read: point the
monitoring of the workers at it. Its body names the live workers' hosts, how many are busy, the
queue depth and the shared Podium budget's counts (slots granted, ``rate_limit`` answers).
"""

from __future__ import annotations

import logging
from typing import Any

from django.db import DatabaseError, connection
from django.http import HttpRequest, JsonResponse

logger = logging.getLogger(__name__)


def healthz(request: HttpRequest) -> JsonResponse:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
    except DatabaseError as exc:
        logger.error("health check: database unreachable: %s", exc)
        return JsonResponse({"status": "error", "database": "unreachable"}, status=503)
    if request.GET.get("workers") not in ("1", "true", "yes"):
        return JsonResponse({"status": "ok", "database": "ok"})
    return _with_workers()


def _with_workers() -> JsonResponse:
    from dedup import budget
    from dedup.heartbeat import worker_status

    status = worker_status()
    body: dict[str, Any] = {
        "status": "ok",
        "database": "ok",
        "workers": status.as_json(),
        "budget": budget.counts(),
    }
    problems = []
    if not status.live:
        problems.append("no live worker")
    if status.queued is None:
        problems.append("the task queue cannot be read")
    if problems:
        body["status"] = "error"
        body["problems"] = problems
        logger.error("health check: %s", "; ".join(problems))
        return JsonResponse(body, status=503)
    return JsonResponse(body)
