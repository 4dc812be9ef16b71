"""The deployment policy: everyone with a role may read it, admins change it (audited before/after)."""

from __future__ import annotations

from django.contrib import messages
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_http_methods

from dedup import access
from dedup.forms import PolicyForm
from dedup.models import Policy
from dedup.schedule import sync_scan_schedule
from dedup.views.common import login_required


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
                # The periodic scan follows the policy's interval from now on.
                sync_scan_schedule(form.instance)
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
