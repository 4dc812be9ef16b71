"""``manage.py merge``: merge one cluster, every auto-mergeable cluster, or resume unfinished merges.

Every merge from the command line is made by a person: ``--as USER`` names a real user who may act on
the cluster's locations, and the audit names them. A cluster that does not merge automatically (review,
cross-location) also needs ``--force``; one whose merge would lose values also ``--accept-losses``.

Runs inline (no worker needed) and prints each operation's *final* state; on a terminal a progress bar
goes to stderr. ``--queue`` hands the merges to the background workers instead (``dedup.workqueue``)
and waits until they are done, showing progress (a bar on a terminal, a line every few seconds
otherwise, on stderr); ``--no-wait`` returns as soon as they are queued. ``--dry-run`` prints each plan
and the calls it would make, calling nothing. The last line printed is a JSON summary of operation
states. Exit status: 0 when every operation this run touched finished (``patched``; with
``--no-wait``, when they are queued); 3 when one needs a person or a retry, or did not finish (Podium
unreachable: the operation waits for a retry; ``--timeout`` passed); 1 on a refusal.

A merge of one ``--cluster`` is a person waiting at a terminal: its Podium calls are interactive in
the shared budget (``dedup.budget``); ``--all-auto`` is bulk work.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser

from dedup import access
from dedup.heartbeat import worker_status
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
from dedup.workqueue import OperationsProgress, follow_operations
from podium_client.ratelimit import INTERACTIVE, prioritized

#: Without a terminal, a progress line this often while waiting for the workers.
PLAIN_EVERY_SECONDS = 5.0


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
        parser.add_argument(
            "--queue", action="store_true", help="hand the merges to the background workers and wait for them"
        )
        parser.add_argument("--no-wait", action="store_true", help="with --queue: return once the merges are queued")
        parser.add_argument(
            "--timeout", type=float, metavar="SECONDS", help="with --queue: stop waiting after this long (exit 3)"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        if options["dry_run"] and options["resume"]:
            raise CommandError("--dry-run applies to --cluster and --all-auto, not --resume")
        if options["queue"] and (options["resume"] or options["dry_run"]):
            raise CommandError("--queue applies to merging --cluster and --all-auto (not --resume or --dry-run)")
        if (options["no_wait"] or options["timeout"] is not None) and not options["queue"]:
            raise CommandError("--no-wait and --timeout go with --queue")
        touched: list[MergeOperation] = []
        if options["resume"]:
            counts = resume_operations(worker="cli")
            self.stdout.write("resume: " + (", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "nothing to do"))
            touched = list(MergeOperation.objects.exclude(state__in=MergeOperation.TERMINAL_STATES))
        elif options["all_auto"]:
            touched = self._all_auto(options)
        else:
            # A person waits for this one: its calls go before bulk work in the shared budget.
            with prioritized(INTERACTIVE):
                touched = self._one(options)
        if options["queue"]:
            touched = self._wait(touched, options)
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
            if options["queue"]:
                from dedup.merge.machine import enqueue

                enqueue(live.pk)
                return [live]
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
                    cluster, user=user, run_async=options["queue"], actor="cli",
                    accept_losses=options["accept_losses"],
                )  # fmt: skip
            except (ClusterBusyError, MergeRefused) as exc:
                raise CommandError(str(exc)) from exc
        operation.refresh_from_db()
        if not options["queue"]:
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
        bar = _Progress(sys.stderr) if sys.stderr.isatty() and not options["queue"] else None
        try:
            results = merge_all_auto(
                actor="cli", user=user, progress=bar.update if bar else None, queue=options["queue"]
            )
        except MergeRefused as exc:
            raise CommandError(exc.message) from exc
        finally:
            if bar is not None:
                bar.done()
        if not results:
            self.stdout.write("no open auto-mergeable clusters")
        ids = [r.pk for r in results if isinstance(r, MergeOperation)]
        if options["queue"]:
            return list(MergeOperation.objects.filter(pk__in=ids).order_by("pk"))
        final = {op.pk: op for op in MergeOperation.objects.filter(pk__in=ids).select_related("cluster")}
        operations = [final[pk] for pk in ids]
        for operation in operations:
            self.stdout.write(to_json_line(operation_json(operation)))
        return operations

    # --- handed to the workers ---------------------------------------------------------------------------

    def _wait(self, queued: list[MergeOperation], options: dict[str, Any]) -> list[MergeOperation]:
        """Follow the queued operations until the workers are done with them; print each final state."""
        if not queued:
            return []
        batches = sorted({op.batch_id for op in queued if op.batch_id is not None})
        where = f" (batch {', '.join(f'#{b}' for b in batches)})" if batches else ""
        self.stderr.write(f"{len(queued)} merge(s) queued for the workers{where}")
        if options["no_wait"]:
            for op in queued:
                self.stdout.write(to_json_line(operation_json(op)))
            self.stderr.write("not waiting (--no-wait): follow them on the dashboard's History page")
            return []
        self._warn_without_workers()
        show = _Waiting(self.stderr, sys.stderr.isatty(), self._warn_without_workers)
        try:
            progress = follow_operations([op.pk for op in queued], show.update, timeout=options["timeout"])
        finally:
            show.done()
        for operation in progress.operations:
            self.stdout.write(to_json_line(operation_json(operation)))
        if not progress.settled:
            self.stderr.write(
                f"stopped waiting after {options['timeout']:g} s (--timeout): the workers carry on with what is left"
            )
        return progress.operations

    def _warn_without_workers(self) -> None:
        if not worker_status().live:
            self.stderr.write(
                "no background worker is alive (no heartbeat): the merges wait in the queue until one starts "
                "(`python manage.py qcluster`)"
            )

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


class _Waiting:
    """Progress of queued merges: a bar redrawn on a terminal, else a line every few seconds."""

    WIDTH = 30

    def __init__(self, stream: Any, tty: bool, check_workers: Callable[[], None]) -> None:
        self.stream = stream
        self.tty = tty
        self.check_workers = check_workers
        self.started = time.monotonic()
        self.last_line = 0.0
        self.last_check = time.monotonic()
        self.drawn = False

    def update(self, progress: OperationsProgress) -> None:
        done, total = progress.finished + progress.later, progress.total
        counts = " ".join(f"{state} {n}" for state, n in sorted(progress.states.items()))
        now = time.monotonic()
        if self.tty:
            filled = int(self.WIDTH * done / total) if total else self.WIDTH
            bar = "#" * filled + "." * (self.WIDTH - filled)
            self.stream.write(f"\rmerging {done}/{total} [{bar}] {counts}  ", ending="")
            self.stream.flush()
            self.drawn = True
        elif now - self.last_line >= PLAIN_EVERY_SECONDS or progress.settled:
            self.last_line = now
            self.stream.write(
                f"merging: {done}/{total} done, {progress.in_progress} in progress, {progress.queued} queued "
                f"({counts}) after {now - self.started:.0f} s"
            )
        if now - self.last_check >= 60:
            # Still waiting a minute later: say again if nobody is there to do the work.
            self.last_check = now
            self.check_workers()

    def done(self) -> None:
        if self.drawn:
            self.stream.write("")
