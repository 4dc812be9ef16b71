"""Sign in (locked out after repeated failures, through django-axes) and sign out (POST only)."""

from __future__ import annotations

from typing import Any

from axes.handlers.proxy import AxesProxyHandler
from django.contrib.auth import login as auth_login
from django.contrib.auth import logout as auth_logout
from django.contrib.auth.forms import AuthenticationForm
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.cache import never_cache
from django.views.decorators.csrf import csrf_protect
from django.views.decorators.debug import sensitive_post_parameters
from django.views.decorators.http import require_http_methods, require_POST

from dedup.lockout import LoginLimitHandler


def _safe_next(request: HttpRequest) -> str:
    target = request.POST.get("next") or request.GET.get("next") or "/"
    if url_has_allowed_host_and_scheme(target, {request.get_host()}, require_https=request.is_secure()):
        return target
    return "/"


@sensitive_post_parameters("password")
@csrf_protect
@never_cache
@require_http_methods(["GET", "POST"])
def login(request: HttpRequest) -> HttpResponse:
    # A locked-out username or address never reaches the password check: axes' backend refuses it inside
    # form validation, and its middleware answers with ``locked_out`` below.
    if request.user.is_authenticated and request.method == "GET":
        return redirect(_safe_next(request))
    form = AuthenticationForm(request, data=request.POST if request.method == "POST" else None)
    if request.method == "POST" and form.is_valid():
        auth_login(request, form.get_user())
        return redirect(_safe_next(request))
    return render(request, "accounts/login.html", {"form": form, "next": _safe_next(request)})


def locked_out(request: HttpRequest, original_response: HttpResponse | None, credentials: dict[str, Any] | None) -> HttpResponse:
    """``AXES_LOCKOUT_CALLABLE``: the sign-in page again, saying why and for how long, with 429 and Retry-After.

    Used for the admin's sign-in too, so both say the same thing.
    """
    handler = AxesProxyHandler.get_implementation()
    seconds = handler.retry_after_seconds(request, credentials) if isinstance(handler, LoginLimitHandler) else 900
    minutes = max(1, (seconds + 59) // 60)
    message = (
        "Too many failed sign-in attempts. For your security, sign-in is paused for this account or address. "
        f"Try again in about {minutes} minute{'s' if minutes != 1 else ''}, or ask an admin."
    )
    form = AuthenticationForm(request)
    form.initial["username"] = str(request.POST.get("username", ""))[:150]
    response = render(
        request,
        "accounts/login.html",
        {"form": form, "next": _safe_next(request), "locked_message": message},
        status=429,
    )
    response["Retry-After"] = str(seconds)
    return response


@require_POST
def logout(request: HttpRequest) -> HttpResponse:
    auth_logout(request)
    return redirect("login")
