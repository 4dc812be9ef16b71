"""Forms: the filters of the list pages, the review actions, the policy editor.

Filter forms are bound to ``request.GET`` and never raise: an invalid value is dropped and the page
shows the field's error next to it, so a mangled URL still shows a page. Every value a filter passes on
is one the database and Python's date arithmetic can hold (``tests/test_hostile_filters.py`` walks every
filter of every list page with hostile values).
"""

from __future__ import annotations

from datetime import date
from decimal import Decimal
from typing import Any

import phonenumbers
from django import forms
from django.db import transaction
from django.db.models import QuerySet

from dedup import audit
from dedup.models import Cluster, Location, MergeOperation, Policy
from dedup.queue import SORTS

PER_PAGE_CHOICES = [(25, "25"), (50, "50"), (100, "100")]

CLUSTER_SORTS = SORTS
CLUSTER_SORT_CHOICES = [
    ("-confidence", "Confidence, highest first"),
    ("confidence", "Confidence, lowest first"),
    ("-created", "Newest first"),
    ("created", "Oldest first"),
    ("-members", "Most members first"),
]


# The dates a filter accepts. The bounds keep "the day after" and a time zone's offset inside what Python's
# datetime and every database can represent (year 9999 + 1 day overflows), with room to spare.
FILTER_DATE_MIN = date(1900, 1, 1)
FILTER_DATE_MAX = date(2999, 12, 31)


class FilterDateField(forms.DateField):
    """A date filter that refuses dates outside ``FILTER_DATE_MIN``..``FILTER_DATE_MAX`` with a form error."""

    def validate(self, value: Any) -> None:
        super().validate(value)
        if value is not None and not FILTER_DATE_MIN <= value <= FILTER_DATE_MAX:
            raise forms.ValidationError(
                f"Enter a date between {FILTER_DATE_MIN:%d %b %Y} and {FILTER_DATE_MAX:%d %b %Y}.",
                code="out_of_range",
            )


class _LocationChoiceMixin:
    def limit_locations(self, locations: QuerySet[Location]) -> None:
        field = self.fields["location"]  # type: ignore[attr-defined]
        field.queryset = locations


class ClusterFilterForm(_LocationChoiceMixin, forms.Form):
    q = forms.CharField(
        required=False, max_length=200, label="Search",
        help_text="A name (accents and case do not matter), contact uid, phone or cl_… id",
    )
    location = forms.ModelChoiceField(
        queryset=Location.objects.none(), required=False, empty_label="All my locations", to_field_name="uid"
    )
    kind = forms.ChoiceField(choices=[("", "Any kind"), *Cluster.KIND_CHOICES], required=False)
    status = forms.ChoiceField(
        choices=[("", "Any status"), *Cluster.STATUS_CHOICES], required=False, initial=Cluster.OPEN
    )
    min_confidence = forms.DecimalField(
        required=False, min_value=Decimal("0"), max_value=Decimal("1"), decimal_places=2, label="Confidence from"
    )
    max_confidence = forms.DecimalField(
        required=False, min_value=Decimal("0"), max_value=Decimal("1"), decimal_places=2, label="Confidence to"
    )
    sort = forms.ChoiceField(choices=CLUSTER_SORT_CHOICES, required=False, initial="-confidence")
    per_page = forms.TypedChoiceField(choices=PER_PAGE_CHOICES, coerce=int, required=False, initial=25)

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        low, high = data.get("min_confidence"), data.get("max_confidence")
        if low is not None and high is not None and low > high:
            self.add_error("max_confidence", "The upper bound is below the lower bound.")
        return data


class BulkApproveForm(forms.Form):
    """The clusters ticked on the review queue (auto clusters only)."""

    clusters = forms.TypedMultipleChoiceField(coerce=int, choices=[], error_messages={
        "required": "Tick at least one auto-mergeable cluster to approve.",
    })
    confirm = forms.BooleanField(required=False)

    def __init__(self, *args: Any, cluster_ids: list[int] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Any integer is accepted here; the view checks each id through the access helper.
        raw = self.data.getlist("clusters") if hasattr(self.data, "getlist") else []
        ids = cluster_ids if cluster_ids is not None else [v for v in raw if str(v).isdigit()]
        self.fields["clusters"].choices = [(int(i), str(i)) for i in ids]  # type: ignore[attr-defined]


class ApproveMatchingForm(forms.Form):
    """The confirmation of "approve all N matching": what the person saw counted, checked again on POST."""

    expected = forms.IntegerField(min_value=0, max_value=10_000_000, widget=forms.HiddenInput)
    upto = forms.IntegerField(min_value=0, max_value=2**62, widget=forms.HiddenInput)
    confirm = forms.BooleanField(required=True)


class RejectForm(forms.Form):
    note = forms.CharField(
        required=False, max_length=2000, widget=forms.Textarea(attrs={"rows": 2}),
        label="Note (optional)", help_text="Why these are different people, e.g. “mother and daughter”.",
    )


class ChangePrimaryForm(forms.Form):
    primary_uid = forms.ChoiceField(label="Keep this contact", choices=[])

    def __init__(self, *args: Any, member_uids: list[tuple[str, str]], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["primary_uid"].choices = member_uids  # type: ignore[attr-defined]


class RestoreForm(forms.Form):
    different_people = forms.BooleanField(
        required=False,
        label="These are different people",
        help_text="Remembered: the pair will not be proposed as duplicates again.",
    )
    note = forms.CharField(required=False, max_length=2000, widget=forms.Textarea(attrs={"rows": 2}),
                           label="Note (optional)")


class ResolveForm(forms.Form):
    resolution = forms.ChoiceField(
        choices=[
            ("merged_manually", "I finished the merge in Podium by hand: mark the cluster merged"),
            ("abandoned", "Leave it unmerged: the cluster fails and its keys are rescanned"),
            ("retry", "Podium is fixed: reconcile and continue the merge again"),
        ],
        widget=forms.RadioSelect,
    )
    note = forms.CharField(max_length=2000, widget=forms.Textarea(attrs={"rows": 3}),
                           help_text="What you checked in Podium. Recorded in the audit log.")


class ContactSearchForm(forms.Form):
    q = forms.CharField(required=False, max_length=200, label="Search",
                        help_text="Name, phone number, a contact's uid, the uid it was merged into or re-created as")


class UncategorizedFilterForm(_LocationChoiceMixin, forms.Form):
    location = forms.ModelChoiceField(
        queryset=Location.objects.none(), required=False, empty_label="All my locations", to_field_name="uid"
    )
    code = forms.ChoiceField(
        required=False,
        label="Reason",
        choices=[("", "Any reason"), ("ERR_DEDUP_001", "Not parseable (ERR_DEDUP_001)"),
                 ("ERR_DEDUP_002", "Not a valid number (ERR_DEDUP_002)")],
    )


class HistoryFilterForm(forms.Form):
    state = forms.ChoiceField(choices=[("", "Any state"), *MergeOperation.STATE_CHOICES], required=False)


class AuditFilterForm(_LocationChoiceMixin, forms.Form):
    date_from = FilterDateField(required=False, label="From", widget=forms.DateInput(attrs={"type": "date"}))
    date_to = FilterDateField(required=False, label="To", widget=forms.DateInput(attrs={"type": "date"}))
    user = forms.CharField(required=False, max_length=150, label="User",
                           help_text="Username, or a worker name")
    location = forms.ModelChoiceField(
        queryset=Location.objects.none(), required=False, empty_label="All my locations", to_field_name="uid"
    )
    event_type = forms.ChoiceField(required=False, choices=[], label="Event type")
    subject = forms.CharField(required=False, max_length=200, label="Contact uid or phone")

    def __init__(self, *args: Any, event_types: list[str] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        types = event_types or []
        self.fields["event_type"].choices = [("", "Any event"), *[(t, t) for t in types]]  # type: ignore[attr-defined]

    def clean_event_type(self) -> str:
        return str(self.cleaned_data.get("event_type") or "")

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        low, high = data.get("date_from"), data.get("date_to")
        if low and high and low > high:
            self.add_error("date_to", "The end date is before the start date.")
        return data


class ScanForm(forms.Form):
    full = forms.BooleanField(required=False, label="Full scan",
                              help_text="Re-read every contact instead of only those changed since the last scan.")


POLICY_FIELDS = [
    "default_region",
    "auto_merge_threshold",
    "cross_location_auto_merge",
    "email_secondary_key",
    "scan_interval_minutes",
    "rate_limit_per_minute",
]


class PolicyForm(forms.ModelForm):
    class Meta:
        model = Policy
        fields = POLICY_FIELDS
        labels = {
            "default_region": "Default region",
            "auto_merge_threshold": "Automatic merge threshold",
            "cross_location_auto_merge": "Merge cross-location clusters automatically",
            "email_secondary_key": "Use email as a secondary key",
            "scan_interval_minutes": "Scan every (minutes)",
            "rate_limit_per_minute": "Podium requests per minute",
        }
        help_texts = {
            "default_region": "Two-letter country code used to read national-format numbers, e.g. AU.",
            "auto_merge_threshold": "Between 0.60 and 1.00. Clusters whose every pair scores at least this "
            "much, with no conflict, merge without review.",
            "cross_location_auto_merge": "Off by default: the same person at two locations is reviewed by a person.",
            "email_secondary_key": "Off by default: contacts that share only an email are not proposed.",
            "scan_interval_minutes": "At least 5.",
            "rate_limit_per_minute": "The product's budget of Podium API requests.",
        }

    def clean_default_region(self) -> str:
        region = str(self.cleaned_data["default_region"]).strip().upper()
        if region not in phonenumbers.SUPPORTED_REGIONS:
            raise forms.ValidationError(f"“{region}” is not a region phone numbers can be read in (e.g. AU, NZ, US).")
        return region

    def clean_auto_merge_threshold(self) -> Decimal:
        value = self.cleaned_data["auto_merge_threshold"]
        if value is None or not Decimal("0.60") <= value <= Decimal("1.00"):
            raise forms.ValidationError("The threshold must be between 0.60 (a shared phone alone) and 1.00.")
        return Decimal(value)

    def clean_scan_interval_minutes(self) -> int:
        value = int(self.cleaned_data["scan_interval_minutes"])
        if value < 5:
            raise forms.ValidationError("Scans cannot run more often than every 5 minutes.")
        return value

    def clean_rate_limit_per_minute(self) -> int:
        value = int(self.cleaned_data["rate_limit_per_minute"])
        if not 1 <= value <= 100_000:
            raise forms.ValidationError("Between 1 and 100,000 requests per minute.")
        return value

    def save_audited(self, user: Any) -> dict[str, dict[str, Any]]:
        """Save the policy and append ``policy.changed`` with every changed field's before and after.

        Returns the changes (empty when nothing changed, and then nothing is recorded).
        """
        with transaction.atomic():
            before = Policy.objects.select_for_update().get(pk=self.instance.pk)
            changes = {
                name: {"before": _plain(getattr(before, name)), "after": _plain(self.cleaned_data[name])}
                for name in POLICY_FIELDS
                if _plain(getattr(before, name)) != _plain(self.cleaned_data[name])
            }
            if not changes:
                return {}
            self.save()
            actor, actor_id = audit.actor_for(user)
            audit.record("policy.changed", actor=actor, actor_user_id=actor_id, payload={"changes": changes})
        return changes


def _plain(value: Any) -> Any:
    if isinstance(value, Decimal):
        return f"{value:.2f}"
    return value
