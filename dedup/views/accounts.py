"""Sign in (rate limited) and sign out (POST only)."""

from __future__ import annotations

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

from dedup import loginlimit


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
    if request.user.is_authenticated and request.method == "GET":
        return redirect(_safe_next(request))
    form = AuthenticationForm(request, data=request.POST if request.method == "POST" else None)
    status = 200
    locked_message = ""
    if request.method == "POST":
        username = request.POST.get("username", "")
        address = loginlimit.client_address(request)
        verdict = loginlimit.check(username, address)
        if not verdict.allowed:
            # Refused before the password is even checked, so a correct guess during the lockout is useless.
            locked_message = verdict.message
            status = 429
            form = AuthenticationForm(request)
            form.initial["username"] = username[:150]
        elif form.is_valid():
            loginlimit.record_success(username)
            auth_login(request, form.get_user())
            return redirect(_safe_next(request))
        else:
            loginlimit.record_failure(username, address)
    response = render(
        request,
        "accounts/login.html",
        {"form": form, "next": _safe_next(request), "locked_message": locked_message},
        status=status,
    )
    if status == 429:
        response["Retry-After"] = str(verdict.retry_after_seconds)
    return response


@require_POST
def logout(request: HttpRequest) -> HttpResponse:
    auth_logout(request)
    return redirect("login")
