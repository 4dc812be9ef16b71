"""The deployment policy: everyone with a role may read it, admins change it (audited before/after)."""

from __future__ import annotations

from django.contrib import messages
from django.db import transaction
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from dedup import access, audit, reevaluation
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
            with transaction.atomic():
                changes = form.save_audited(request.user)
                # In the same transaction: no cluster scored under the old policy merges in bulk after it.
                actor, actor_id = audit.actor_for(request.user)
                rerun = reevaluation.policy_changed(
                    changes, user=request.user, actor=actor, actor_user_id=actor_id
                )
            if changes:
                # The periodic scan follows the policy's interval from now on.
                sync_scan_schedule(form.instance)
                messages.success(
                    request,
                    "Policy saved: " + ", ".join(sorted(changes)) + ". The change is in the audit log.",
                )
                if rerun is not None:
                    messages.info(
                        request,
                        "Every open cluster is being re-evaluated under the new policy (progress below); "
                        "until then clusters scored under the old one are not merged automatically or in bulk.",
                    )
            else:
                messages.info(request, "Nothing changed.")
            return redirect(reverse("settings"))
        messages.error(request, "The policy was not saved: correct the fields marked below.")
        status = 400
    else:
        form = PolicyForm(instance=policy)
        status = 200
    return render(
        request,
        "settings/policy.html",
        {"form": form, "policy": policy, "can_change": can_change, "reevaluation": reevaluation.current()},
        status=status,
    )


@login_required
@require_GET
def reevaluation_progress(request: HttpRequest) -> HttpResponse:
    """The re-evaluation's progress (the settings page polls it while one runs)."""
    access.require_perm(request, "dedup.view_policy")
    return render(request, "settings/_reevaluation.html", {"reevaluation": reevaluation.current()})


@login_required
@require_POST
def reevaluation_restart(request: HttpRequest) -> HttpResponse:
    """Run the re-evaluation again (after one failed)."""
    access.require_perm(request, "dedup.change_settings")
    actor, actor_id = audit.actor_for(request.user)
    run = reevaluation.start_again(user=request.user, actor=actor, actor_user_id=actor_id)
    messages.info(request, f"Re-evaluation #{run.pk} started.")
    return redirect(reverse("settings"))
