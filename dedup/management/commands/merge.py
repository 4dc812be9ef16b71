"""``manage.py merge``: merge one cluster, every auto-mergeable cluster, or resume unfinished merges.

Runs inline (no worker needed). ``--dry-run`` prints each plan (primary, duplicates, every member's
opt-outs and their union, the write-back, the exact API calls) and calls nothing. The last line
printed is always a JSON summary of operation states. Exit status 3 when an operation this run touched
ended needing a person or a retry (``compliance_failed`` or ``unreconcilable``).
"""

from __future__ import annotations

import json
import sys
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

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

_NEEDS_ATTENTION = (MergeOperation.COMPLIANCE_FAILED, MergeOperation.UNRECONCILABLE)


def _flags(flags: dict[str, bool]) -> str:
    on = [name for name, value in flags.items() if value]
    return ", ".join(on) if on else "none"


class Command(BaseCommand):
    help = (
        "Merge duplicate clusters in Podium: --cluster ID | --all-auto (with --dry-run to only print the plan) "
        "| --resume. The last line is a JSON summary of merge operation states."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        what = parser.add_mutually_exclusive_group(required=True)
        what.add_argument("--cluster", metavar="ID", help="a cluster id (cl_…) or its numeric row id")
        what.add_argument("--all-auto", action="store_true", help="every open auto-mergeable cluster")
        what.add_argument("--resume", action="store_true", help="reconcile and finish every unfinished merge")
        parser.add_argument("--dry-run", action="store_true", help="print the plan and the API calls; call nothing")

    def handle(self, *args: Any, **options: Any) -> None:
        if options["dry_run"] and options["resume"]:
            raise CommandError("--dry-run applies to --cluster and --all-auto, not --resume")
        touched: list[MergeOperation] = []
        if options["resume"]:
            counts = resume_operations(worker="cli")
            self.stdout.write("resume: " + (", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "nothing to do"))
            touched = list(MergeOperation.objects.filter(state__in=_NEEDS_ATTENTION))
        elif options["all_auto"]:
            try:
                results = merge_all_auto(actor="cli", dry_run=options["dry_run"])
            except MergeRefused as exc:
                raise CommandError(exc.message) from exc
            if not results:
                self.stdout.write("no open auto-mergeable clusters")
            for result in results:
                if isinstance(result, dict):
                    self._print_plan(result)
                else:
                    touched.append(result)
                    self.stdout.write(to_json_line(operation_json(result)))
        else:
            cluster = self._cluster(options["cluster"])
            if options["dry_run"]:
                try:
                    self._print_plan(describe_plan(cluster))
                except MergeRefused as exc:
                    raise CommandError(exc.message) from exc
            else:
                operation = self._merge_one(cluster)
                touched.append(operation)
                self.stdout.write(to_json_line(operation_json(operation)))
        self.stdout.write(json.dumps({"operations": operation_summary()}, sort_keys=True))
        if any(op.state in _NEEDS_ATTENTION for op in touched):
            sys.exit(3)

    @staticmethod
    def _cluster(ident: str) -> Cluster:
        cluster = Cluster.objects.filter(cluster_id=ident).first()
        if cluster is None and ident.isdigit():
            cluster = Cluster.objects.filter(pk=int(ident)).first()
        if cluster is None:
            raise CommandError(f"unknown cluster {ident!r} (see `manage.py clusters`)")
        return cluster

    @staticmethod
    def _merge_one(cluster: Cluster) -> MergeOperation:
        live = cluster.operations.exclude(state__in=MergeOperation.TERMINAL_STATES).order_by("-pk").first()
        if live is not None:
            if live.state == MergeOperation.UNRECONCILABLE:
                raise CommandError(
                    f"cluster {cluster.cluster_id}: merge #{live.pk} needs a person (ERR_DEDUP_012): {live.last_error}"
                )
            return run_operation(live.pk, worker="cli")
        if cluster.status != Cluster.OPEN:
            raise CommandError(f"cluster {cluster.cluster_id} is {cluster.status}, not open; nothing to merge")
        try:
            return approve_cluster(cluster, user=None, run_async=False, actor="cli")
        except (ClusterBusyError, MergeRefused) as exc:
            raise CommandError(str(exc)) from exc

    def _print_plan(self, plan: dict[str, Any]) -> None:
        w = self.stdout.write
        w(f"cluster {plan['clusterId']} ({plan['kind']}, {plan['status']}) — dry run, nothing is called")
        w(f"  primary      {plan['primaryUid']} (chosen by {plan['chosenBy']})")
        w(f"  duplicates   {', '.join(plan['duplicateUids'])}")
        for uid, flags in plan["optOutsBefore"].items():
            w(f"  opt-outs     {uid}: {_flags(flags)}")
        w(f"  union        {_flags(plan['optOutUnion'])}")
        w(f"  write-back   {json.dumps(plan['writeBack'], sort_keys=True)}")
        for conflict in plan["conflicts"]:
            w(f"  conflict     {conflict['field']}: keeps {conflict['kept']!r}, drops {conflict['dropped']!r} "
              f"(from {conflict['fromUid']})")
        if plan["refused"]:
            w(f"  REFUSED      {plan['refused']['code']} restore loop: {plan['refused']['restoreCounts']}")
        for i, call in enumerate(plan["calls"], 1):
            target = call.get("uid") or call.get("primaryUid")
            body = f" {json.dumps(call['body'], sort_keys=True)}" if "body" in call else ""
            w(f"  call {i}       {call['call']}({target}){body}")
        w(to_json_line({"dryRun": True, "plan": plan}))
