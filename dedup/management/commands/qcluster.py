"""``manage.py qcluster``: django-q2's cluster, stopping within seconds on SIGTERM or Ctrl-C.

Takes precedence over django-q2's command of the same name (``dedup`` is listed before ``django_q`` in
``INSTALLED_APPS``); what differs is how it stops, see ``dedup.workers``.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from django.conf import settings
from django_q.management.commands.qcluster import Command as DjangoQClusterCommand

from dedup.workers import run_cluster


class Command(DjangoQClusterCommand):
    help = "Start the background workers (a django-q2 cluster); SIGTERM or Ctrl-C stops them within seconds."

    def handle(self, *args: Any, **options: Any) -> None:
        # The cluster signs its tasks with it: fail here, before starting anything, when it is missing.
        settings.SECRET_KEY  # noqa: B018
        if options.get("cluster_name"):
            os.environ["Q_CLUSTER_NAME"] = options["cluster_name"]
        status = run_cluster(run_once=bool(options.get("run_once")))
        if status:
            sys.exit(status)
