"""Soft-deleted contacts (merged away or deleted in Podium), and restoring one (admins, confirmed first)."""

from __future__ import annotations

from django.contrib import messages
from django.db.models import Q
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_http_methods

from dedup import access
from dedup.forms import ContactSearchForm, RestoreForm
from dedup.merge import MergeRefused
from dedup.merge.restoring import RestoreError, restore_contact
from dedup.models import ContactKey, Policy, RestoreRecord
from dedup.phones import normalize_phone
from dedup.queue import name_search_q
from dedup.views.common import login_required, paginate, query_without_page
from podium_client import PodiumError


@login_required
@require_GET
def deleted_list(request: HttpRequest) -> HttpResponse:
    access.require_perm(request, "dedup.view_contact")
    form = ContactSearchForm(request.GET)
    contacts = access.contacts_visible_to(request.user).filter(
        Q(deleted_at__isnull=False) | ~Q(merged_into_uid="")
    )
    q = form.cleaned_data.get("q", "").strip() if form.is_valid() else ""
    if q:
        match = Q(uid=q) | Q(merged_into_uid=q) | name_search_q(q)
        phone = normalize_phone(q, Policy.current().default_region)
        if phone.valid and phone.e164:
            match |= Q(pk__in=ContactKey.objects.filter(key=phone.e164).values("contact_id"))
        contacts = contacts.filter(match)
    contacts = contacts.select_related("location").order_by("-deleted_at", "-id")
    page = paginate(request, contacts, 50)
    # What each was merged into, in one query for the page.
    into_uids = {c.merged_into_uid for c in page if c.merged_into_uid}
    primaries = {c.uid: c for c in access.contacts_visible_to(request.user).filter(uid__in=into_uids)}
    restored = set(
        RestoreRecord.objects.filter(contact_uid__in=[c.uid for c in page]).values_list("contact_uid", flat=True)
    )
    rows = [
        {"contact": c, "primary": primaries.get(c.merged_into_uid), "restored_before": c.uid in restored}
        for c in page
    ]
    return render(
        request,
        "contacts/deleted.html",
        {
            "form": form,
            "page": page,
            "rows": rows,
            "query": query_without_page(request.GET),
            "can_restore": access.has_perm(request.user, "dedup.restore_contact"),
        },
    )


@login_required
@require_http_methods(["GET", "POST"])
def restore(request: HttpRequest, uid: str) -> HttpResponse:
    """GET is the confirmation page; POST restores. Both need the restore permission."""
    contact = access.get_contact_for_user(request, uid, write=True, perm="dedup.restore_contact")
    if contact.is_active:
        messages.info(request, f"{contact.uid} is not deleted; there is nothing to restore.")
        return redirect(reverse("deleted_contacts"))
    form = RestoreForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            record = restore_contact(
                contact.uid,
                user=request.user,
                different_people=form.cleaned_data["different_people"],
                note=form.cleaned_data["note"],
            )
        except (RestoreError, MergeRefused) as exc:
            messages.error(request, f"{exc.code}: {exc}" if exc.code else str(exc))
            return redirect(reverse("deleted_contacts") + f"?q={contact.uid}")
        except PodiumError as exc:
            messages.error(request, f"Podium did not complete the restore ({exc}). Nothing was changed here; try again.")
            return redirect(reverse("deleted_contacts") + f"?q={contact.uid}")
        flags = [name for name, on in (record.opt_outs_applied or {}).items() if on]
        kept = f" It keeps the opt-outs the merge computed ({', '.join(flags)})." if flags else ""
        messages.success(request, f"Restored {contact.uid}.{kept}")
        return redirect(reverse("deleted_contacts") + f"?q={contact.uid}")
    primary = access.contacts_visible_to(request.user).filter(uid=contact.merged_into_uid).first() \
        if contact.merged_into_uid else None
    rounds = RestoreRecord.objects.filter(contact_uid=contact.uid).count()
    return render(
        request,
        "contacts/restore_confirm.html",
        {"contact": contact, "primary": primary, "form": form, "rounds": rounds},
    )
