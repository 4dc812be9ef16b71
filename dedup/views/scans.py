"""Scan runs with live progress, and "Scan now"."""

from __future__ import annotations

from django.contrib import messages
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_GET, require_POST

from dedup import access
from dedup.forms import ScanForm
from dedup.scanning import ConcurrentRunError, start_scan
from dedup.views.common import is_htmx, login_required
from dedup.views.presenting import location_names


@login_required
@require_GET
def scan_list(request: HttpRequest) -> HttpResponse:
    access.require_perm(request, "dedup.view_scanrun")
    scans = list(access.scans_visible_to(request.user).select_related("requested_by").order_by("-created_at")[:50])
    context = {
        "scans": scans,
        "any_active": any(s.is_active for s in scans),
        "scan_form": ScanForm(),
        "can_scan": access.has_perm(request.user, "dedup.run_scan"),
    }
    template = "scans/_table.html" if is_htmx(request) else "scans/list.html"
    return render(request, template, context)


@login_required
@require_POST
def scan_now(request: HttpRequest) -> HttpResponse:
    """Start a scan of the user's locations (every location for admins and unrestricted users)."""
    access.require_perm(request, "dedup.run_scan")
    form = ScanForm(request.POST)
    full = bool(form.is_valid() and form.cleaned_data["full"])
    scope = access.scan_scope_for(request.user)
    if scope is not None and not scope:
        messages.error(request, "You are not granted any location, so there is nothing to scan.")
    else:
        try:
            run = start_scan(locations=scope, full=full, requested_by=request.user)
        except ConcurrentRunError as exc:
            # The message names the scan holding the scope, who started it and when.
            messages.error(request, str(exc))
        else:
            where = "every location" if scope is None else ", ".join(sorted(location_names(scope).values()))
            messages.success(request, f"Scan #{run.pk} started for {where}. Progress is shown below.")
    target = request.POST.get("next") or reverse("scan_list")
    if not url_has_allowed_host_and_scheme(target, {request.get_host()}):
        target = reverse("scan_list")
    return redirect(target)
