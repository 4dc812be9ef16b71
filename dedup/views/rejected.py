"""Records scans set aside (unreadable or unstorable), with the reason and the raw text; admins only.

A scan never stops for one bad record: it quarantines it and indexes the rest. This page is where an
admin finds each one, why it was refused and exactly what was read, to fix it in Podium (or in the
export) so the next scan indexes it. Their raw text may belong to any location, so no location grant
shows it: managers and auditors get 403.
"""

from __future__ import annotations

from django import forms
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_GET

from dedup import access
from dedup.models import ScanRun
from dedup.views.common import login_required, paginate, query_without_page

PER_PAGE = 50


class RejectedFilterForm(forms.Form):
    """Records of one scan; an invalid value is a form error and shows every record."""

    scan = forms.IntegerField(required=False, min_value=1, max_value=2**31 - 1, label="Scan #")


@login_required
@require_GET
def rejected_list(request: HttpRequest) -> HttpResponse:
    access.require_admin(request)
    form = RejectedFilterForm(request.GET)
    records = access.rejected_records_visible_to(request.user).select_related("scan_run")
    scan = None
    if form.is_valid() and form.cleaned_data.get("scan"):
        scan = ScanRun.objects.filter(pk=form.cleaned_data["scan"]).first()
        records = records.filter(scan_run_id=form.cleaned_data["scan"])
    page = paginate(request, records.order_by("-created_at", "-id"), PER_PAGE)
    return render(
        request,
        "rejected/list.html",
        {"form": form, "page": page, "scan": scan, "query": query_without_page(request.GET)},
    )
