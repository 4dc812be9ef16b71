"""``manage.py merge``: merge one cluster, every auto-mergeable cluster, or resume unfinished merges.

Every merge from the command line is made by a person: ``--as USER`` names a real user who may act on
the cluster's locations, and the audit names them. A cluster that does not merge automatically (review,
cross-location) also needs ``--force``; one whose merge would lose values also ``--accept-losses``.

Runs inline (no worker needed) and prints each operation's *final* state; on a terminal a progress bar
goes to stderr. ``--dry-run`` prints each plan and the calls it would make, calling nothing. The last
line printed is a JSON summary of operation states. Exit status: 0 when every operation this run
touched finished (``patched``); 3 when one needs a person or a retry, or did not finish (Podium
unreachable: the operation waits for a retry); 1 on a refusal.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser

from dedup import access
from dedup.merge import (
    ClusterBusyError,
    MergeRefused,
    approve_cluster,
    describe_plan,
    merge_all_auto,
    operation_json,
    operation_summary,
    resume_operations,
    run_operation,
    to_json_line,
)
from dedup.models import Cluster, MergeOperation


def _flags(flags: dict[str, bool]) -> str:
    on = [name for name, value in flags.items() if value]
    return ", ".join(on) if on else "none"


class Command(BaseCommand):
    help = (
        "Merge duplicate clusters in Podium: --cluster ID | --all-auto (with --dry-run to only print the plan) "
        "| --resume. --as USER names who decides. The last line is a JSON summary of merge operation states."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        what = parser.add_mutually_exclusive_group(required=True)
        what.add_argument("--cluster", metavar="ID", help="a cluster id (cl_…) or its numeric row id")
        what.add_argument("--all-auto", action="store_true", help="every open auto-mergeable cluster")
        what.add_argument("--resume", action="store_true", help="reconcile and finish every unfinished merge")
        parser.add_argument("--dry-run", action="store_true", help="print the plan and the API calls; call nothing")
        parser.add_argument(
            "--as", dest="as_user", metavar="USER", help="the user deciding the merge (required to merge)"
        )
        parser.add_argument(
            "--force", action="store_true", help="merge a cluster that is not auto-mergeable (a person's call)"
        )
        parser.add_argument(
            "--accept-losses", action="store_true", help="accept the values the merge cannot carry (see --dry-run)"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        if options["dry_run"] and options["resume"]:
            raise CommandError("--dry-run applies to --cluster and --all-auto, not --resume")
        touched: list[MergeOperation] = []
        if options["resume"]:
            counts = resume_operations(worker="cli")
            self.stdout.write("resume: " + (", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "nothing to do"))
            touched = list(MergeOperation.objects.exclude(state__in=MergeOperation.TERMINAL_STATES))
        elif options["all_auto"]:
            touched = self._all_auto(options)
        else:
            touched = self._one(options)
        self.stdout.write(json.dumps({"operations": operation_summary()}, sort_keys=True))
        self._exit(touched)

    # --- what to merge ----------------------------------------------------------------------------------

    def _user(self, options: dict[str, Any], clusters: list[Cluster]) -> Any:
        name = options.get("as_user")
        if not name:
            raise CommandError("say who decides this merge: --as USER (a user who may act on its locations)")
        user = get_user_model().objects.filter(username=name, is_active=True).first()
        if user is None:
            raise CommandError(f"no active user {name!r} (create one with `manage.py create_user`)")
        for cluster in clusters:
            if not access.can_act_on_cluster(user, cluster, "dedup.approve_cluster"):
                raise CommandError(
                    f"{name} may not merge cluster {cluster.cluster_id}: it needs the approve permission and a grant "
                    "on every location of the cluster"
                )
        return user

    def _one(self, options: dict[str, Any]) -> list[MergeOperation]:
        cluster = self._cluster(options["cluster"])
        if options["dry_run"]:
            try:
                self._print_plan(describe_plan(cluster))
            except MergeRefused as exc:
                raise CommandError(exc.message) from exc
            return []
        user = self._user(options, [cluster])
        live = cluster.operations.exclude(state__in=MergeOperation.TERMINAL_STATES).order_by("-pk").first()
        if live is not None:
            if live.state == MergeOperation.UNRECONCILABLE:
                raise CommandError(
                    f"cluster {cluster.cluster_id}: merge #{live.pk} needs a person (ERR_DEDUP_012): {live.last_error}"
                )
            operation = run_operation(live.pk, worker="cli")
        else:
            if cluster.status != Cluster.OPEN:
                raise CommandError(f"cluster {cluster.cluster_id} is {cluster.status}, not open; nothing to merge")
            if not cluster.auto_merge and not options["force"]:
                reasons = ", ".join(cluster.reasons) or cluster.kind
                raise CommandError(
                    f"cluster {cluster.cluster_id} is a {cluster.kind} cluster ({reasons}): it does not merge "
                    "automatically; look at it (--dry-run, or the dashboard) and add --force if these are one person"
                )
            try:
                operation = approve_cluster(
                    cluster, user=user, run_async=False, actor="cli", accept_losses=options["accept_losses"]
                )
            except (ClusterBusyError, MergeRefused) as exc:
                raise CommandError(str(exc)) from exc
        operation.refresh_from_db()
        self.stdout.write(to_json_line(operation_json(operation)))
        return [operation]

    def _all_auto(self, options: dict[str, Any]) -> list[MergeOperation]:
        clusters = list(Cluster.objects.filter(status=Cluster.OPEN, auto_merge=True).order_by("pk"))
        if options["dry_run"]:
            if not clusters:
                self.stdout.write("no open auto-mergeable clusters")
            for plan in merge_all_auto(actor="cli", dry_run=True):
                assert isinstance(plan, dict)
                self._print_plan(plan)
            return []
        user = self._user(options, [])
        outside = [c for c in clusters if not access.can_act_on_cluster(user, c, "dedup.approve_cluster")]
        if outside:
            self.stderr.write(
                f"{len(outside)} auto-mergeable cluster(s) are outside {user.get_username()}'s locations and are "
                "left for someone who manages them"
            )
        bar = _Progress(sys.stderr) if sys.stderr.isatty() else None
        try:
            results = merge_all_auto(actor="cli", user=user, progress=bar.update if bar else None)
        except MergeRefused as exc:
            raise CommandError(exc.message) from exc
        finally:
            if bar is not None:
                bar.done()
        if not results:
            self.stdout.write("no open auto-mergeable clusters")
        ids = [r.pk for r in results if isinstance(r, MergeOperation)]
        final = {op.pk: op for op in MergeOperation.objects.filter(pk__in=ids).select_related("cluster")}
        operations = [final[pk] for pk in ids]
        for operation in operations:
            self.stdout.write(to_json_line(operation_json(operation)))
        return operations

    def _exit(self, touched: list[MergeOperation]) -> None:
        unfinished = [op for op in touched if op.state != MergeOperation.PATCHED]
        if not unfinished:
            return
        states: dict[str, int] = {}
        for op in unfinished:
            states[op.state] = states.get(op.state, 0) + 1
        detail = ", ".join(f"{n} {state}" for state, n in sorted(states.items()))
        self.stderr.write(
            f"{len(unfinished)} of {len(touched)} merge(s) did not finish ({detail}); see the operations above, "
            "the dashboard's History page, or run `manage.py merge --resume`"
        )
        sys.exit(3)

    @staticmethod
    def _cluster(ident: str) -> Cluster:
        cluster = Cluster.objects.filter(cluster_id=ident).first()
        if cluster is None and ident.isdigit():
            cluster = Cluster.objects.filter(pk=int(ident)).first()
        if cluster is None:
            raise CommandError(f"unknown cluster {ident!r} (see `manage.py clusters`)")
        return cluster

    def _print_plan(self, plan: dict[str, Any]) -> None:
        w = self.stdout.write
        w(f"cluster {plan['clusterId']} ({plan['kind']}, {plan['status']}, {plan['strategy']}) — dry run, nothing is called")
        w(f"  primary      {plan['primaryUid']} (chosen by {plan['chosenBy']})")
        w(f"  duplicates   {', '.join(plan['duplicateUids'])}")
        for uid, flags in plan["optOutsBefore"].items():
            w(f"  opt-outs     {uid}: {_flags(flags)}")
        w(f"  union        {_flags(plan['optOutUnion'])}")
        for loss in plan["losses"]:
            w(f"  loss         {loss['field']} of {loss['fromUid']}: {loss['reason']}")
        for blocker in plan["blockers"]:
            w(f"  BLOCKED      {blocker}")
        if plan["refused"]:
            w(f"  REFUSED      {json.dumps(plan['refused'], sort_keys=True)}")
        for i, call in enumerate(plan["calls"], 1):
            detail = {k: v for k, v in call.items() if k != "call"}
            w(f"  call {i:<7}{call['call']} {json.dumps(detail, sort_keys=True)}")
        w(to_json_line({"dryRun": True, "plan": plan}))


class _Progress:
    """A one-line progress bar on a terminal: done / total, and how many finished each way."""

    WIDTH = 30

    def __init__(self, stream: Any) -> None:
        self.stream = stream
        self.states: dict[str, int] = {}

    def update(self, done: int, total: int, operation: MergeOperation) -> None:
        self.states[operation.state] = self.states.get(operation.state, 0) + 1
        filled = int(self.WIDTH * done / total) if total else self.WIDTH
        counts = " ".join(f"{state} {n}" for state, n in sorted(self.states.items()))
        self.stream.write(f"\rmerging {done}/{total} [{'#' * filled}{'.' * (self.WIDTH - filled)}] {counts}  ")
        self.stream.flush()

    def done(self) -> None:
        self.stream.write("\n")
        self.stream.flush()
