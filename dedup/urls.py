"""URL routes. Views live in ``dedup.views``; this file only maps paths."""

from __future__ import annotations

from django.contrib import admin
from django.urls import path, register_converter

from dedup.health import healthz
from dedup.views import (
    accounts,
    api,
    audit,
    clusters,
    contacts,
    dashboard,
    history,
    locations,
    rejected,
    review,
    scan_detail,
    scans,
    settings,
    uncategorized,
    webhooks,
)


class PodiumUidConverter:
    """A Podium uid in a path: any text but a slash or a control character (a NUL cannot reach a query)."""

    regex = r"[^/\x00-\x1f\x7f]+"

    def to_python(self, value: str) -> str:
        return value

    def to_url(self, value: str) -> str:
        return value


class ClusterRefConverter:
    """A cluster's stable id (``cl_…``, ``clx_…`` for a cross-location one) or, for old links, its database id."""

    regex = r"clx?_[A-Za-z0-9]+|[0-9]+"

    def to_python(self, value: str) -> str:
        return value

    def to_url(self, value: object) -> str:
        return str(value)


register_converter(PodiumUidConverter, "uid")
register_converter(ClusterRefConverter, "cluster")

urlpatterns = [
    path("healthz", healthz, name="healthz"),
    path("admin/", admin.site.urls),
    path("accounts/login/", accounts.login, name="login"),
    path("accounts/logout/", accounts.logout, name="logout"),
    path("", dashboard.dashboard, name="dashboard"),
    path("progress/", dashboard.progress, name="progress"),
    path("clusters/", clusters.cluster_list, name="cluster_list"),
    path("clusters/approve-selected/", clusters.approve_selected, name="approve_selected"),
    path("clusters/approve-matching/", clusters.approve_matching, name="approve_matching"),
    path("clusters/<cluster:ref>/", review.cluster_detail, name="cluster_detail"),
    path("clusters/<cluster:ref>/approve/", review.approve, name="cluster_approve"),
    path("clusters/<cluster:ref>/reject/", review.reject, name="cluster_reject"),
    path("clusters/<cluster:ref>/primary/", review.set_primary, name="cluster_primary"),
    path("history/", history.history_list, name="history"),
    path("history/<int:operation_id>/", history.history_detail, name="history_detail"),
    path("history/<int:operation_id>/state/", history.operation_state, name="operation_state"),
    path("history/<int:operation_id>/retry/", history.retry, name="operation_retry"),
    path("history/<int:operation_id>/resolve/", history.resolve, name="operation_resolve"),
    path("audit/", audit.audit_list, name="audit"),
    path("audit/chain/", audit.chain_status, name="audit_chain"),
    path("contacts/deleted/", contacts.deleted_list, name="deleted_contacts"),
    path("contacts/<uid:uid>/restore/", contacts.restore, name="contact_restore"),
    path("uncategorized/", uncategorized.uncategorized_list, name="uncategorized"),
    path("scans/", scans.scan_list, name="scan_list"),
    path("scans/start/", scans.scan_now, name="scan_now"),
    path("scans/<int:scan_id>/", scan_detail.scan_detail, name="scan_detail"),
    path("scans/rejected/", rejected.rejected_list, name="rejected_records"),
    path("locations/", locations.location_list, name="locations"),
    path("locations/<int:location_id>/region/", locations.location_region, name="location_region"),
    path("locations/<int:location_id>/reparse/", locations.location_reparse, name="location_reparse"),
    path("settings/", settings.policy_settings, name="settings"),
    path("settings/reevaluation/", settings.reevaluation_progress, name="reevaluation_progress"),
    path("settings/reevaluation/restart/", settings.reevaluation_restart, name="reevaluation_restart"),
    path("webhooks/", webhooks.webhook_health, name="webhook_health"),
    path("webhooks/check/", webhooks.webhook_check, name="webhook_check"),
    path("api-tokens/", api.token_list, name="api_tokens"),
    path("api-tokens/<int:token_id>/revoke/", api.token_revoke, name="api_token_revoke"),
    # Machine endpoints: Podium's deliveries, integrations' lookups.
    path("podium/webhooks/", webhooks.receive, name="podium_webhook"),
    path("api/v1/lookup", api.lookup_view, name="api_lookup"),
    path("api/v1/lookup/", api.lookup_view),
]
