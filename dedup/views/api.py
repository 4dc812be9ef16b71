"""The lookup API for integrations (``GET /api/v1/lookup``, bearer tokens) and the admins' token page."""

from __future__ import annotations

import logging

from django import forms
from django.conf import settings
from django.contrib import messages
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_http_methods, require_POST
from django_ratelimit.core import get_usage

from dedup import access, audit
from dedup.api_tokens import TokenError, authenticate, create_token, revoke_token
from dedup.lookup import LookupRefused, lookup, parse_query
from dedup.models import ApiToken, Location
from dedup.views.common import login_required

logger = logging.getLogger("dedup.api")

TOKEN_PERM = "dedup.change_settings"


def _error(status: int, code: str, message: str, **headers: str) -> JsonResponse:
    response = JsonResponse({"error": code, "message": message}, status=status)
    for name, value in headers.items():
        response[name] = value
    return response


@require_GET
def lookup_view(request: HttpRequest) -> HttpResponse:
    """``GET /api/v1/lookup?phone=…|email=…&location=…`` with ``Authorization: Bearer <token>``."""
    token = authenticate(request.headers.get("Authorization"))
    if token is None:
        return _error(
            401, "unauthenticated", "send Authorization: Bearer <token> with an active token",
            **{"WWW-Authenticate": 'Bearer realm="lookup"'},
        )  # fmt: skip
    usage = get_usage(
        request, group="api-lookup", key=lambda _g, _r: f"token:{token.pk}", rate=settings.API_LOOKUP_RATE_LIMIT,
        increment=True,
    )  # fmt: skip
    if usage is not None and usage["should_limit"]:
        retry = str(max(int(usage["time_left"]), 1))
        return _error(
            429, "rate_limit", "too many lookups for this token; slow down", **{"Retry-After": retry}
        )
    try:
        query = parse_query(request.GET, list(token.location_uids))
    except LookupRefused as refused:
        return JsonResponse(refused.as_dict(), status=refused.status)
    return JsonResponse(lookup(query))


class TokenForm(forms.Form):
    name = forms.CharField(max_length=100, label="Integration")
    locations = forms.ModelMultipleChoiceField(
        queryset=Location.objects.all(), to_field_name="uid", widget=forms.CheckboxSelectMultiple,
        help_text="The token looks up contacts of these locations only.",
    )  # fmt: skip


@login_required
@require_http_methods(["GET", "POST"])
def token_list(request: HttpRequest) -> HttpResponse:
    """Admins list, create and revoke integrations' tokens; a new token is shown once."""
    access.require_perm(request, TOKEN_PERM)
    issued = None
    status = 200
    if request.method == "POST":
        form = TokenForm(request.POST)
        if form.is_valid():
            actor, actor_id = audit.actor_for(request.user)
            try:
                issued = create_token(
                    form.cleaned_data["name"], [loc.uid for loc in form.cleaned_data["locations"]],
                    actor=actor, actor_user_id=actor_id, user=request.user,
                )  # fmt: skip
            except TokenError as exc:
                form.add_error(None, str(exc))
                status = 400
            else:
                form = TokenForm()
        else:
            status = 400
    else:
        form = TokenForm()
    tokens = ApiToken.objects.select_related("created_by", "revoked_by").order_by("-created_at", "-id")
    response = render(
        request, "api/tokens.html", {"form": form, "tokens": tokens, "issued": issued}, status=status
    )
    if issued is not None:
        response["Cache-Control"] = "no-store"
    return response


@login_required
@require_POST
def token_revoke(request: HttpRequest, token_id: int) -> HttpResponse:
    access.require_perm(request, TOKEN_PERM)
    row = get_object_or_404(ApiToken, pk=token_id)
    actor, actor_id = audit.actor_for(request.user)
    if revoke_token(row, actor=actor, actor_user_id=actor_id, user=request.user):
        messages.success(request, f"Token “{row.name}” ({row.prefix}…) is revoked: it stops working now.")
    else:
        messages.info(request, f"Token “{row.name}” was revoked already.")
    return redirect(reverse("api_tokens"))
