"""One scan run: what it read, what it set aside, what it found, and why it failed if it did."""

from __future__ import annotations

from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_GET

from dedup import access
from dedup.views.common import is_htmx, login_required


@login_required
@require_GET
def scan_detail(request: HttpRequest, scan_id: int) -> HttpResponse:
    access.require_perm(request, "dedup.view_scanrun")
    scan = access.scans_visible_to(request.user).select_related("requested_by").filter(pk=scan_id).first()
    if scan is None:
        raise Http404("No such scan.")
    checkpoint = scan.checkpoint if isinstance(scan.checkpoint, dict) else {}
    stream = checkpoint.get("stream")
    reparsed = checkpoint.get("reparsed")
    stream = stream if isinstance(stream, dict) else {}
    reparsed = reparsed if isinstance(reparsed, dict) else {}
    context = {
        "scan": scan,
        "stream": stream,
        "reparsed": sorted(reparsed.items()),
        "can_see_rejected": access.is_admin(request.user),
    }
    template = "scans/_detail.html" if is_htmx(request) else "scans/detail.html"
    return render(request, template, context)
