"""The audit log: filter it, export the filtered set (CSV or NDJSON, streamed), see whether the chain holds."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from datetime import datetime, time, timedelta
from typing import Any

from django.core.cache import cache
from django.db.models import Q, QuerySet
from django.http import HttpRequest, HttpResponse, StreamingHttpResponse
from django.http.response import HttpResponseBase
from django.shortcuts import render
from django.utils import timezone
from django.views.decorators.http import require_GET

from dedup import access, audit
from dedup.forms import AuditFilterForm
from dedup.models import AuditEvent, Location, Policy
from dedup.phones import normalize_phone
from dedup.spreadsheet import neutralize_row
from dedup.views.common import login_required, paginate, query_without_page

CHAIN_CACHE_KEY = "dedup:audit-chain-status"
CHAIN_CACHE_SECONDS = 60
EXPORT_CHUNK = 2000
EXPORT_COLUMNS = [
    "id", "created_at", "event_type", "actor", "cluster_ref", "operation_ref",
    "location_uids", "subjects", "payload", "prev_hash", "hash",
]
def subject_term(raw: str, region: str) -> str:
    """What a typed subject matches in ``subjects``: a phone becomes its E.164, anything else stays as typed."""
    text = raw.strip()
    if not text:
        return ""
    result = normalize_phone(text, region)
    return result.e164 if result.valid and result.e164 else text


def filtered_events(request: HttpRequest, form: AuditFilterForm) -> QuerySet[AuditEvent]:
    """The events this person may see, narrowed by every filter whose value is valid.

    An invalid value is left out (the page shows its error next to the field) rather than dropping the
    other filters with it.
    """
    events = access.audit_events_visible_to(request.user)
    form.is_valid()
    data = form.cleaned_data
    tz = timezone.get_current_timezone()
    if data.get("date_from"):
        events = events.filter(created_at__gte=datetime.combine(data["date_from"], time.min, tzinfo=tz))
    if data.get("date_to"):
        end = datetime.combine(data["date_to"], time.min, tzinfo=tz) + timedelta(days=1)
        events = events.filter(created_at__lt=end)
    if data.get("user"):
        name = data["user"].strip()
        events = events.filter(Q(actor=f"user:{name}") | Q(actor=f"worker:{name}") | Q(actor=name))
    if data.get("location"):
        events = events.filter(location_uids__icontains=f'"{data["location"].uid}"')
    if data.get("event_type"):
        events = events.filter(event_type=data["event_type"])
    if data.get("subject"):
        term = subject_term(data["subject"], Policy.current().default_region)
        if term:
            events = events.filter(subjects__contains=f" {term} ")
    return events


def _form(request: HttpRequest) -> AuditFilterForm:
    types = list(AuditEvent.objects.order_by("event_type").values_list("event_type", flat=True).distinct())
    form = AuditFilterForm(request.GET, event_types=types)
    form.limit_locations(access.visible_locations(request.user))
    return form


@login_required
@require_GET
def audit_list(request: HttpRequest) -> HttpResponseBase:
    access.require_perm(request, "dedup.view_auditevent")
    form = _form(request)
    export = request.GET.get("format", "")
    if export:
        return _export(request, form, export)
    events = filtered_events(request, form).order_by("-id")
    page = paginate(request, events, 50)
    return render(
        request,
        "audit/list.html",
        {
            "form": form,
            "page": page,
            "query": query_without_page(request.GET),
            "can_export": access.has_perm(request.user, "dedup.export_audit"),
        },
    )


@login_required
@require_GET
def chain_status(request: HttpRequest) -> HttpResponse:
    """The chain's verification, cached briefly: verifying walks every event."""
    access.require_perm(request, "dedup.view_auditevent")
    cached = cache.get(CHAIN_CACHE_KEY)
    if cached is None:
        status = audit.verify_chain()
        cached = {"ok": status.ok, "text": status.describe(), "checked_at": timezone.now()}
        cache.set(CHAIN_CACHE_KEY, cached, CHAIN_CACHE_SECONDS)
    return render(request, "audit/_chain.html", {"chain": cached})


def _row(event: AuditEvent) -> dict[str, Any]:
    return {
        "id": event.pk,
        "created_at": event.created_at.isoformat(),
        "event_type": event.event_type,
        "actor": event.actor,
        "cluster_ref": event.cluster_ref,
        "operation_ref": event.operation_ref,
        "location_uids": event.location_uids,
        "subjects": event.subjects.split(),
        "payload": event.payload,
        "prev_hash": event.prev_hash,
        "hash": event.hash,
    }


class _Echo:
    """A file-like object whose write returns the line, so csv.writer can feed a generator."""

    def write(self, value: str) -> str:
        return value


def _csv_lines(events: QuerySet[AuditEvent]) -> Iterator[str]:
    writer = csv.writer(_Echo())
    yield writer.writerow(EXPORT_COLUMNS)
    for event in events.iterator(chunk_size=EXPORT_CHUNK):
        row = _row(event)
        cells = [
            str(row["id"]),
            row["created_at"],
            row["event_type"],
            row["actor"],
            row["cluster_ref"],
            "" if row["operation_ref"] is None else str(row["operation_ref"]),
            " ".join(row["location_uids"]),
            " ".join(row["subjects"]),
            json.dumps(row["payload"], sort_keys=True, ensure_ascii=False),
            row["prev_hash"],
            row["hash"],
        ]
        yield writer.writerow(neutralize_row(cells))


def _ndjson_lines(events: QuerySet[AuditEvent]) -> Iterator[str]:
    for event in events.iterator(chunk_size=EXPORT_CHUNK):
        yield json.dumps(_row(event), sort_keys=True, ensure_ascii=False) + "\n"


def _recorded_filters(form: AuditFilterForm) -> dict[str, str]:
    """The export's filters as validated (what was applied), not the raw query string."""
    recorded = {}
    for name, value in form.cleaned_data.items():
        if value in (None, ""):
            continue
        recorded[name] = value.uid if isinstance(value, Location) else str(value)
    return recorded


def _export(request: HttpRequest, form: AuditFilterForm, fmt: str) -> HttpResponseBase:
    access.require_perm(request, "dedup.export_audit")
    if fmt not in {"csv", "ndjson"}:
        return HttpResponse("Unknown export format: use format=csv or format=ndjson.", status=400,
                            content_type="text/plain; charset=utf-8")
    if not form.is_valid():
        # An export is a record an auditor keeps: never silently wider than the filters asked for.
        problems = [
            f"{form.fields[name].label or name if name in form.fields else 'filters'}: {' '.join(str(e) for e in errors)}"
            for name, errors in form.errors.items()
        ]
        return HttpResponse("No export was made. Fix the filters: " + "; ".join(problems), status=400,
                            content_type="text/plain; charset=utf-8")
    # The export is of the log as it stood when asked for: not the export's own event, nor later ones.
    last_id = AuditEvent.objects.order_by("-id").values_list("id", flat=True).first() or 0
    events = filtered_events(request, form).filter(id__lte=last_id).order_by("id")
    actor, actor_id = audit.actor_for(request.user)
    audit.record(
        "audit.exported",
        actor=actor,
        actor_user_id=actor_id,
        payload={"format": fmt, "filters": _recorded_filters(form)},
    )
    stamp = timezone.now().strftime("%Y%m%d-%H%M%S")
    if fmt == "csv":
        response = StreamingHttpResponse(_csv_lines(events), content_type="text/csv; charset=utf-8")
    else:
        response = StreamingHttpResponse(_ndjson_lines(events), content_type="application/x-ndjson; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="audit-{stamp}.{fmt}"'
    response["Cache-Control"] = "no-store"
    return response
