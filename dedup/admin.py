"""Django admin for admins; the audit log is read-only here as everywhere."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.http import HttpRequest

from dedup import models


@admin.register(models.Location)
class LocationAdmin(admin.ModelAdmin):
    list_display = ["uid", "name", "country", "podium_country", "region_override"]
    search_fields = ["uid", "name"]
    # The region is set on the dashboard's Locations page, where the change is audited and the
    # location's contacts are re-parsed; editing it here would do neither.
    readonly_fields = ["uid", "country", "podium_country", "region_override", "region_parsed"]


@admin.register(models.LocationGrant)
class LocationGrantAdmin(admin.ModelAdmin):
    list_display = ["user", "location"]
    list_filter = ["location"]


class ContactKeyInline(admin.TabularInline):
    model = models.ContactKey
    extra = 0
    fields = ["kind", "key", "raw", "extension"]
    readonly_fields = ["kind", "key", "raw", "extension"]


@admin.register(models.Contact)
class ContactAdmin(admin.ModelAdmin):
    list_display = ["uid", "name", "location", "field_count", "updated_at", "deleted_at", "merged_into_uid"]
    list_filter = ["location", "marketing_opt_out", "sms_opt_out", "email_opt_out"]
    search_fields = ["uid", "name", "keys__key"]
    inlines = [ContactKeyInline]
    list_select_related = ["location"]


@admin.register(models.UncategorizedPhone)
class UncategorizedPhoneAdmin(admin.ModelAdmin):
    list_display = ["contact", "location", "code", "reason", "region"]
    list_filter = ["code", "location"]
    list_select_related = ["contact", "location"]


@admin.register(models.ScanRun)
class ScanRunAdmin(admin.ModelAdmin):
    list_display = ["id", "kind", "scope_key", "state", "contacts_seen", "clusters_found", "created_at"]
    list_filter = ["state", "kind"]


class ClusterMemberInline(admin.TabularInline):
    model = models.ClusterMember
    extra = 0
    raw_id_fields = ["contact"]


@admin.register(models.Cluster)
class ClusterAdmin(admin.ModelAdmin):
    list_display = ["cluster_id", "kind", "status", "confidence", "member_count", "location", "created_at"]
    list_filter = ["status", "kind", "cross_location", "location"]
    search_fields = ["cluster_id"]
    inlines = [ClusterMemberInline]
    # A select of every cluster (or scan) would grow with the corpus: 10,000 options per page view.
    raw_id_fields = ["superseded_by", "scan_run"]


@admin.register(models.ReviewDecision)
class ReviewDecisionAdmin(admin.ModelAdmin):
    list_display = ["decision", "cluster", "uid_a", "uid_b", "decided_by", "decided_at"]
    list_filter = ["decision"]


@admin.register(models.MergeOperation)
class MergeOperationAdmin(admin.ModelAdmin):
    list_display = ["id", "cluster", "state", "primary_uid", "attempts", "error_code", "updated_at"]
    list_filter = ["state", "error_code", "automatic"]
    raw_id_fields = ["cluster", "batch"]


@admin.register(models.MergeBatch)
class MergeBatchAdmin(admin.ModelAdmin):
    list_display = ["id", "label", "requested_by", "created_at"]


@admin.register(models.RestoreRecord)
class RestoreRecordAdmin(admin.ModelAdmin):
    list_display = ["contact_uid", "merged_into_uid", "restored_by", "restored_at"]


@admin.register(models.AuditEvent)
class AuditEventAdmin(admin.ModelAdmin):
    list_display = ["id", "created_at", "event_type", "actor", "cluster_ref", "operation_ref"]
    list_filter = ["event_type"]
    search_fields = ["subjects", "cluster_ref", "actor"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(models.Policy)
class PolicyAdmin(admin.ModelAdmin):
    """Policy changes belong on /settings/ where they are audited; the admin only shows the row."""

    list_display = ["__str__", "default_region", "auto_merge_threshold", "cross_location_auto_merge"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False
