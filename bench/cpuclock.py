"""CPU seconds spent by this process, its child processes and a local PostgreSQL server (Linux ``/proc``).

The benches use it to say where a phase's CPU went, beside its wall time: on a two-core machine the
database server shares the cores with the product, so its share bounds what the product can reach.

* **This process**: ``getrusage(RUSAGE_SELF)``, every thread.
* **Its children** (preparation and scoring workers): the ones already reaped, from
  ``getrusage(RUSAGE_CHILDREN)``, plus the ones still running, from their ``/proc/<pid>/stat``.
* **PostgreSQL**: the server's postmaster (found as the parent of this connection's backend) with
  every process it ever started: those running now from ``/proc``, the exited ones from the
  postmaster's own ``cutime``/``cstime`` (the kernel adds a child's CPU there when it is reaped). This
  is the whole server: another database's work in the meantime counts too.
* **The machine**: busy time of every CPU from ``/proc/stat``, to see whether anything else ran.

Readings are in seconds; a reading a machine cannot give (no ``/proc``, a server on another host) is
``None``.
"""

from __future__ import annotations

import os
import resource
from dataclasses import dataclass
from pathlib import Path

_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_PROC = Path("/proc")


@dataclass(frozen=True)
class ProcStat:
    """The fields of one ``/proc/<pid>/stat`` line the clock needs (CPU in seconds)."""

    pid: int
    ppid: int
    own: float  # utime + stime
    reaped_children: float  # cutime + cstime


def parse_stat(line: str) -> ProcStat:
    """One ``/proc/<pid>/stat`` line; the command name may hold spaces and parentheses."""
    head, _, tail = line.rpartition(")")
    pid = int(head.split("(", 1)[0])
    fields = tail.split()
    # After the name: state(0) ppid(1) ... utime(11) stime(12) cutime(13) cstime(14), man 5 proc.
    ppid = int(fields[1])
    utime, stime, cutime, cstime = (int(v) for v in fields[11:15])
    return ProcStat(pid, ppid, (utime + stime) / _TICK, (cutime + cstime) / _TICK)


def all_processes() -> dict[int, ProcStat]:
    """Every process visible in ``/proc`` (a process exiting while it is read is left out)."""
    found: dict[int, ProcStat] = {}
    for entry in _PROC.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = parse_stat((entry / "stat").read_text())
        except (FileNotFoundError, ProcessLookupError):
            continue  # it exited between the listing and the read
        found[stat.pid] = stat
    return found


def descendants(processes: dict[int, ProcStat], root: int) -> list[ProcStat]:
    """The running processes below ``root`` (children, their children, ...)."""
    children: dict[int, list[int]] = {}
    for stat in processes.values():
        children.setdefault(stat.ppid, []).append(stat.pid)
    out: list[ProcStat] = []
    stack = list(children.get(root, ()))
    while stack:
        pid = stack.pop()
        out.append(processes[pid])
        stack.extend(children.get(pid, ()))
    return out


def machine_busy() -> float | None:
    """Seconds every CPU of the machine spent busy (not idle, not waiting on I/O) since boot."""
    try:
        first = (_PROC / "stat").read_text().splitlines()[0].split()
    except OSError:
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in first[1:9])
    return (user + nice + system + irq + softirq + steal) / _TICK


@dataclass(frozen=True)
class Reading:
    """CPU seconds since boot of each party (see the module docstring); subtract two readings."""

    this_process: float
    children: float | None
    postgres: float | None
    machine: float | None

    def __sub__(self, earlier: Reading) -> Reading:
        def minus(a: float | None, b: float | None) -> float | None:
            return None if a is None or b is None else a - b

        return Reading(
            self.this_process - earlier.this_process,
            minus(self.children, earlier.children),
            minus(self.postgres, earlier.postgres),
            minus(self.machine, earlier.machine),
        )


def postmaster_pid(backend_pid: int | None) -> int | None:
    """The postmaster of a backend running on this machine (its parent), if ``/proc`` shows it."""
    if backend_pid is None:
        return None
    try:
        return parse_stat((_PROC / str(backend_pid) / "stat").read_text()).ppid
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None  # the server runs elsewhere


def read(postmaster: int | None) -> Reading:
    """CPU seconds so far of this process, its children, the PostgreSQL server and the machine."""
    self_usage = resource.getrusage(resource.RUSAGE_SELF)
    reaped = resource.getrusage(resource.RUSAGE_CHILDREN)
    if not _PROC.is_dir():
        return Reading(self_usage.ru_utime + self_usage.ru_stime, None, None, None)
    processes = all_processes()
    running = descendants(processes, os.getpid())
    # A running process's ``reaped_children`` holds what its own exited children used, which no
    # other figure here counts yet. A child reaped between the two reads above may be counted twice
    # or not at all: one process among hundreds of CPU-seconds, accepted.
    children = reaped.ru_utime + reaped.ru_stime + sum(p.own + p.reaped_children for p in running)
    postgres: float | None = None
    if postmaster is not None and postmaster in processes:
        root = processes[postmaster]
        below = descendants(processes, postmaster)
        postgres = root.own + root.reaped_children + sum(p.own + p.reaped_children for p in below)
    return Reading(self_usage.ru_utime + self_usage.ru_stime, children, postgres, machine_busy())


def django_postmaster() -> int | None:
    """The postmaster behind Django's default connection, when it is PostgreSQL on this machine."""
    from django.db import connection

    if connection.vendor != "postgresql":
        return None
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        row = cursor.fetchone()
    return postmaster_pid(int(row[0])) if row else None


def seconds(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f} s"
