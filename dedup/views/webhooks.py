"""Podium's webhook deliveries (``POST /podium/webhooks/``) and the webhook's health page (admins)."""

from __future__ import annotations

from django.conf import settings
from django.contrib import messages
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_POST
from django_ratelimit.core import get_usage

from dedup import access
from dedup.models import WebhookRefusal
from dedup.realtime import receiver, registration
from dedup.views.common import login_required
from podium_client.errors import PodiumError

WEBHOOK_PERM = "dedup.change_settings"


def _client_address(request: HttpRequest) -> str:
    return str(request.META.get("REMOTE_ADDR") or "unknown")


def _answer(answer: receiver.Answer) -> JsonResponse:
    response = JsonResponse(answer.body, status=answer.status)
    for name, value in answer.headers.items():
        response[name] = value
    return response


@csrf_exempt
@require_POST
def receive(request: HttpRequest) -> HttpResponse:
    """A delivery from Podium: rate-limited per address, bounded in size, signature checked, stored."""
    client = _client_address(request)
    usage = get_usage(
        request, group="podium-webhook", key=lambda _g, _r: client, rate=settings.PODIUM_WEBHOOK_RATE_LIMIT,
        increment=True,
    )  # fmt: skip
    if usage is not None and usage["should_limit"]:
        retry = str(max(int(usage["time_left"]), 1))
        return _answer(
            receiver.refuse(
                429, WebhookRefusal.RATE_LIMITED, "over the rate limit", 0, client, **{"Retry-After": retry}
            )
        )
    limit = settings.PODIUM_WEBHOOK_MAX_BODY_BYTES
    try:
        declared = int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        declared = 0
    if declared > limit:
        return _answer(
            receiver.refuse(413, WebhookRefusal.TOO_LARGE, f"over {limit} bytes", declared, client)
        )
    raw = request.read(limit + 1)
    if len(raw) > limit:
        return _answer(
            receiver.refuse(413, WebhookRefusal.TOO_LARGE, f"over {limit} bytes", len(raw), client)
        )
    return _answer(receiver.accept(raw, request.headers, client))


@login_required
@require_GET
def webhook_health(request: HttpRequest) -> HttpResponse:
    access.require_perm(request, WEBHOOK_PERM)
    state = registration.health()
    receiver_url = request.build_absolute_uri(reverse("podium_webhook"))
    return render(request, "webhooks/health.html", {"health": state, "receiver_url": receiver_url})


@login_required
@require_POST
def webhook_check(request: HttpRequest) -> HttpResponse:
    """Ask Podium now whether the webhook is enabled."""
    access.require_perm(request, WEBHOOK_PERM)
    try:
        found = registration.refresh_from_podium()
    except PodiumError as exc:
        messages.error(request, f"Podium could not be asked: {exc}")
    else:
        if registration.active_registration() is None:
            messages.info(request, "No webhook is registered.")
        elif found is None:
            messages.error(request, "Podium no longer lists the webhook: register it again.")
        elif found.disabled:
            messages.error(
                request, "Podium has disabled the webhook after failed deliveries: register it again."
            )
        else:
            messages.success(request, "Podium says the webhook is enabled.")
    return redirect(reverse("webhook_health"))
