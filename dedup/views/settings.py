"""The deployment policy: everyone with a role may read it, admins change it (audited before/after)."""

from __future__ import annotations

import importlib
import importlib.util
import logging

from django.contrib import messages
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_http_methods

from dedup import access
from dedup.forms import PolicyForm
from dedup.models import Policy
from dedup.views.common import login_required

logger = logging.getLogger(__name__)


@login_required
@require_http_methods(["GET", "POST"])
def policy_settings(request: HttpRequest) -> HttpResponse:
    access.require_perm(request, "dedup.view_policy")
    policy = Policy.current()
    can_change = access.has_perm(request.user, "dedup.change_settings")
    if request.method == "POST":
        access.require_perm(request, "dedup.change_settings")
        form = PolicyForm(request.POST, instance=policy)
        if form.is_valid():
            changes = form.save_audited(request.user)
            if changes:
                _sync_schedule()
                messages.success(request, "Policy saved: " + ", ".join(sorted(changes)) + ". The change is in the audit log.")
            else:
                messages.info(request, "Nothing changed.")
            return redirect(reverse("settings"))
        messages.error(request, "The policy was not saved: correct the fields marked below.")
        status = 400
    else:
        form = PolicyForm(instance=policy)
        status = 200
    return render(request, "settings/policy.html", {"form": form, "policy": policy, "can_change": can_change},
                  status=status)


def _sync_schedule() -> None:
    """Tell the scheduler about a new scan interval, where the scanning work exposes a hook for it."""
    for module_name in ("dedup.schedule", "dedup.scanning"):
        if importlib.util.find_spec(module_name) is None:
            continue
        module = importlib.import_module(module_name)
        sync = getattr(module, "sync_scan_schedule", None)
        if callable(sync):
            sync()
            return
    logger.info("no sync_scan_schedule() hook found; the scan schedule picks the policy up on its next run")
