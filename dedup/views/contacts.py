"""Deleted contacts: those a merge retired (and those gone from Podium), and restoring one (admins, confirmed).

On Podium's published API a merge retires each duplicate with ``DELETE`` after its data landed on the
primary; the merge keeps the duplicate's full snapshot. Restoring re-creates the contact from that
snapshot (Podium gives it a new uid, shown beside the old one, with what could not be put back); on a
tenant with the ``restore`` capability Podium un-hides it instead. A contact that left Podium without a
merge of this product has no snapshot here: it is listed, not restorable.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from django.contrib import messages
from django.db.models import Q
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_http_methods

from dedup import access
from dedup.forms import ContactSearchForm, RestoreForm
from dedup.merge import MergeRefused
from dedup.merge.progress import restore_rounds
from dedup.merge.restoring import RestoreError, restore_contact
from dedup.models import Contact, ContactKey, MergeOperation, Policy, RestoreRecord
from dedup.phones import normalize_phone
from dedup.queue import name_search_q
from dedup.views.common import login_required, paginate, query_without_page
from podium_client import PodiumError


@dataclass
class _Row:
    """One deleted contact, what it was merged into, by which merge, and its restores."""

    contact: Contact
    primary: Contact | None = None
    operation: MergeOperation | None = None
    restores: list[RestoreRecord] = field(default_factory=list)

    @property
    def restored_before(self) -> bool:
        return bool(self.restores)

    @property
    def recreated(self) -> RestoreRecord | None:
        """The re-creation from this contact's merge, once done (a merge's snapshot re-creates once)."""
        return next(
            (r for r in reversed(self.restores) if r.method == RestoreRecord.RECREATED and r.operation_id == self.operation_id),
            None,
        )

    @property
    def operation_id(self) -> int | None:
        return self.operation.pk if self.operation else None

    @property
    def restorable(self) -> bool:
        """Retired by a merge of this product that kept what restoring needs, and not re-created yet."""
        op = self.operation
        if op is None or self.recreated is not None:
            return False
        if op.strategy == MergeOperation.NATIVE:
            return True
        retired = op.steps.get("retired") if isinstance(op.steps, dict) else None
        return isinstance(retired, dict) and retired.get(self.contact.uid) == "deleted"

    @property
    def not_restorable_reason(self) -> str:
        if self.operation is None:
            return "deleted in Podium, not by a merge here: there is no snapshot to restore it from"
        if self.recreated is not None:
            return ""
        return "its merge did not delete it (yet)"


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
        restored_as = RestoreRecord.objects.filter(new_uid=q).values("contact_uid")
        match = Q(uid=q) | Q(merged_into_uid=q) | Q(uid__in=restored_as) | name_search_q(q)
        phone = normalize_phone(q, Policy.current().default_region)
        if phone.valid and phone.e164:
            match |= Q(pk__in=ContactKey.objects.filter(key=phone.e164).values("contact_id"))
        contacts = contacts.filter(match)
    contacts = contacts.select_related("location").order_by("-deleted_at", "-id")
    page = paginate(request, contacts, 50)
    rows = _rows(request, list(page))
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


def _rows(request: HttpRequest, contacts: list[Contact]) -> list[_Row]:
    """A page's rows with what each was merged into, its merge and its restores, in a fixed number of queries."""
    uids = [c.uid for c in contacts]
    into_uids = {c.merged_into_uid for c in contacts if c.merged_into_uid}
    primaries = {c.uid: c for c in access.contacts_visible_to(request.user).filter(uid__in=into_uids)}
    restores: dict[str, list[RestoreRecord]] = {}
    for record in RestoreRecord.objects.filter(contact_uid__in=uids).order_by("restored_at", "pk"):
        restores.setdefault(record.contact_uid, []).append(record)
    operations = _retiring_operations(uids)
    return [
        _Row(c, primaries.get(c.merged_into_uid), operations.get(c.uid), restores.get(c.uid, []))
        for c in contacts
    ]


def _retiring_operations(uids: Iterable[str]) -> dict[str, MergeOperation]:
    """The latest merge that took each contact as a duplicate (as ``restoring.merge_operation_for``, in bulk)."""
    wanted = set(uids)
    found: dict[str, MergeOperation] = {}
    candidates = (
        MergeOperation.objects.filter(cluster__members__contact__uid__in=list(wanted))
        .exclude(state=MergeOperation.PENDING)
        .distinct()
        .order_by("-created_at", "-pk")
    )
    for op in candidates:
        for uid in op.duplicate_uids:
            if uid in wanted and uid not in found:
                found[uid] = op
    return found


@login_required
@require_http_methods(["GET", "POST"])
def restore(request: HttpRequest, uid: str) -> HttpResponse:
    """GET is the confirmation page; POST restores. Both need the restore permission."""
    contact = access.get_contact_for_user(request, uid, write=True, perm="dedup.restore_contact")
    if contact.is_active:
        messages.info(request, f"{contact.uid} is not deleted; there is nothing to restore.")
        return redirect(reverse("deleted_contacts"))
    row = _rows(request, [contact])[0]
    form = RestoreForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        back = reverse("deleted_contacts") + f"?q={contact.uid}"
        try:
            record = restore_contact(
                contact.uid,
                user=request.user,
                different_people=form.cleaned_data["different_people"],
                note=form.cleaned_data["note"],
            )
        except (RestoreError, MergeRefused) as exc:
            messages.error(request, f"{exc.code}: {exc}" if exc.code else str(exc))
            return redirect(back)
        except PodiumError as exc:
            messages.error(request, f"Podium did not complete the restore ({exc}). Nothing was changed here; try again.")
            return redirect(back)
        messages.success(request, _restored_sentence(contact.uid, record))
        for item in record.not_restored or []:
            messages.warning(
                request, f"Not restored: the {item.get('field', 'value')} {item.get('value', '')} — {item.get('reason', '')}."
            )
        return redirect(back)
    # Re-created contacts get a new uid each round: the rounds follow them back to the first one.
    rounds = restore_rounds([contact.uid]).get(contact.uid, 0)
    return render(
        request,
        "contacts/restore_confirm.html",
        {"contact": contact, "row": row, "primary": row.primary, "form": form, "rounds": rounds},
    )


def _restored_sentence(uid: str, record: RestoreRecord) -> str:
    opted_out = (record.opt_outs_applied or {}).get("optedOut") or []
    kept = f" Marketing was withdrawn from {', '.join(opted_out)}, as the merge required." if opted_out else ""
    if record.method == RestoreRecord.RECREATED:
        return (
            f"Re-created {uid} as {record.new_uid}. Podium gave the re-created contact a new uid; it holds at least "
            f"the consent its merge computed.{kept}"
        )
    return f"Restored {uid}: Podium shows it again, with at least the consent its merge computed.{kept}"
