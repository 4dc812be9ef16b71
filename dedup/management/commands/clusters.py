"""``manage.py clusters --format ndjson|table [--status open|all] [--auto|--review] [--cross-location]``.

NDJSON prints one cluster per line in the shape of ``dedup.detection.cluster_to_dict`` (for pipelines);
the table is for people. Clusters are streamed in chunks, so a million-contact index prints in constant
memory.
"""

from __future__ import annotations

import json
from typing import Any

from django.core.management.base import BaseCommand, CommandParser
from django.db.models import QuerySet

from dedup.dblimits import in_list_size
from dedup.detection import cluster_to_dict, clusters_for_export
from dedup.models import Cluster

# Each chunk's members are read with one IN list of the chunk's cluster ids.
_CHUNK = 500


def _chunk_size() -> int:
    return min(_CHUNK, in_list_size())


class Command(BaseCommand):
    help = "List duplicate clusters as NDJSON (one cluster per line) or as a table."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--format", choices=["ndjson", "table"], default="table")
        parser.add_argument(
            "--status", choices=["open", "all"], default="open", help="open clusters only (default) or all"
        )
        which = parser.add_mutually_exclusive_group()
        which.add_argument("--auto", action="store_true", help="only clusters that merge automatically")
        which.add_argument("--review", action="store_true", help="only clusters that need a person")
        parser.add_argument("--cross-location", action="store_true", help="only cross-location clusters")
        parser.add_argument("--location", action="append", default=[], metavar="UID", help="touching this location")

    def handle(self, *args: Any, **options: Any) -> None:
        clusters: QuerySet[Cluster] = Cluster.objects.all()
        if options["status"] == "open":
            clusters = clusters.filter(status=Cluster.OPEN)
        if options["auto"]:
            clusters = clusters.filter(auto_merge=True)
        if options["review"]:
            clusters = clusters.filter(auto_merge=False)
        if options["cross_location"]:
            clusters = clusters.filter(cross_location=True)
        if options["location"]:
            clusters = clusters.filter(locations__uid__in=options["location"]).distinct()
        clusters = clusters_for_export(clusters.order_by("cluster_id"))
        if options["format"] == "ndjson":
            for cluster in clusters.iterator(chunk_size=_chunk_size()):
                self.stdout.write(json.dumps(cluster_to_dict(cluster), ensure_ascii=False, separators=(",", ":")))
            return
        self._table(clusters)

    def _table(self, clusters: QuerySet[Cluster]) -> None:
        header = ("CLUSTER", "KIND", "CONF", "N", "LOCATION", "STATUS", "PRIMARY", "REASONS")
        widths = (20, 6, 4, 3, 14, 10, 18, 0)
        self.stdout.write(_row(header, widths))
        count = 0
        for cluster in clusters.iterator(chunk_size=_chunk_size()):
            data = cluster_to_dict(cluster)
            location = data["locationUid"] or "+".join(sorted({m["locationUid"] for m in data["members"]}))
            self.stdout.write(
                _row(
                    (
                        data["clusterId"],
                        cluster.kind,
                        f"{data['confidence']:.2f}",
                        str(len(data["members"])),
                        location,
                        data["status"],
                        data["suggestedPrimaryUid"],
                        ",".join(data["reasons"]),
                    ),
                    widths,
                )
            )
            count += 1
        self.stdout.write(f"{count} cluster(s)")


def _row(cells: tuple[str, ...], widths: tuple[int, ...]) -> str:
    return "  ".join(cell.ljust(width) if width else cell for cell, width in zip(cells, widths, strict=True)).rstrip()
