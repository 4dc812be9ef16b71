"""Phones that could not become a natural key, with the reason and the region they were read in."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_GET

from dedup import access
from dedup.forms import UncategorizedFilterForm
from dedup.models import Policy
from dedup.views.common import login_required, paginate, query_without_page


@login_required
@require_GET
def uncategorized_list(request: HttpRequest) -> HttpResponse:
    access.require_perm(request, "dedup.view_uncategorizedphone")
    form = UncategorizedFilterForm(request.GET)
    form.limit_locations(access.visible_locations(request.user))
    phones = access.uncategorized_visible_to(request.user).select_related("contact", "location")
    if form.is_valid():
        if form.cleaned_data.get("location"):
            phones = phones.filter(location=form.cleaned_data["location"])
        if form.cleaned_data.get("code"):
            phones = phones.filter(code=form.cleaned_data["code"])
    page = paginate(request, phones.order_by("-first_seen_at", "-id"), 50)
    return render(
        request,
        "uncategorized/list.html",
        {
            "form": form,
            "page": page,
            "query": query_without_page(request.GET),
            "default_region": Policy.current().default_region,
        },
    )
