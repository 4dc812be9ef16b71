"""The product's data: the contact index, clusters, merge operations, the audit log and policy.

The index mirrors what Podium reported when a contact was last indexed; Podium stays the source of
truth and every merge re-reads it first. Audit events are append-only and hash-chained.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any, ClassVar

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.utils import timezone

from dedup import auditchain


class Location(models.Model):
    """A Podium location and the default region its national-format phone numbers are parsed with.

    ``country`` is the region in force: Podium's ``addressDetails.country`` (``podium_country``) when it
    is an ISO 3166 alpha-2 code, else the region an admin set (``region_override``, audited), else the
    deployment's default region. A location with neither Podium's country nor an admin's choice is shown
    to admins as needing one (``needs_region``) instead of being silently parsed with the default.
    """

    PODIUM = "podium"
    ADMIN = "admin"
    DEFAULT = "default"

    uid = models.CharField(max_length=64, unique=True)
    name = models.CharField(max_length=200)
    country = models.CharField(max_length=2, default="AU", help_text="the region in force (ISO 3166 alpha-2)")
    podium_country = models.CharField(
        max_length=2, blank=True, default="", help_text="addressDetails.country as Podium reports it"
    )
    region_override = models.CharField(
        max_length=2, blank=True, default="", help_text="a region an admin chose (used when Podium has none)"
    )
    region_parsed = models.CharField(
        max_length=2,
        blank=True,
        default="",
        help_text="the region the index last parsed this location's contacts with; differs from the "
        "region in force until they are re-parsed",
    )
    archived = models.BooleanField(default=False)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return f"{self.name} ({self.uid})"

    def save(self, *args: Any, **kwargs: Any) -> None:
        if self._state.adding and not self.region_parsed:
            self.region_parsed = self.country  # a new location has no contact parsed with another region
        super().save(*args, **kwargs)

    @property
    def region_source(self) -> str:
        """Where ``country`` comes from: ``podium``, ``admin`` or ``default``."""
        if self.podium_country:
            return self.PODIUM
        if self.region_override:
            return self.ADMIN
        return self.DEFAULT

    @property
    def needs_region(self) -> bool:
        """True when neither Podium nor an admin gave this location a region."""
        return not self.podium_country and not self.region_override

    @property
    def needs_reparse(self) -> bool:
        """True when the region in force changed since this location's contacts were last parsed."""
        return self.region_parsed != self.country

    @staticmethod
    def effective_region(podium_country: str, region_override: str, default_region: str) -> str:
        """The region in force for a location (see the class docstring)."""
        return (podium_country or region_override or default_region).upper()[:2]


class LocationGrant(models.Model):
    """A user may see and act on the clusters and contacts of this location. Admins see all."""

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="location_grants"
    )
    location = models.ForeignKey(Location, on_delete=models.CASCADE, related_name="grants")

    class Meta:
        constraints = [models.UniqueConstraint(fields=["user", "location"], name="uniq_location_grant")]

    def __str__(self) -> str:
        return f"grant {self.user_id} → {self.location_id}"


class Contact(models.Model):
    """One Podium contact as it was when last indexed (the contact index).

    ``location`` is the contact's first location (its home, whose region parses its numbers); a contact
    may belong to several, all listed in ``ContactLocation`` and ``location_uids``. ``channels`` hold
    Podium's per-channel consent (``marketingOptedInLocationUids``, ``transactionalOptedOutAt``), from
    which the three opt-out flags are derived when indexed. ``updated_at`` is Podium's; ``deleted_at``
    and ``merged_into_uid`` are Podium's on a soft-delete tenant, else the product's own record that the
    contact left Podium (retired by a merge, or no longer listed). ``indexed_at`` is ours. A merge
    compares Podium's live ``updatedAt`` with ``updated_at`` to detect drift.
    """

    # Unique through a constraint (in Meta), not ``unique=True``: on PostgreSQL that would also build a
    # second, pattern-matching index of the uid, which no query uses and every contact written pays for.
    uid = models.CharField(max_length=64)
    # No index of its own: contact_loc_deleted (location, deleted_at) serves every lookup by location.
    # The index tables' references to a location are kept by the application, not checked by the
    # database (``db_constraint=False``, here and on ``ContactLocation``, ``ContactKey`` and
    # ``UncategorizedPhone``), as the cluster tables' are (see ``Cluster.location``). PostgreSQL checks
    # a foreign key with one locking query per row: about 3.5 checks of the same few location rows per
    # contact written, 15 of PostgreSQL's 66 µs of CPU per contact indexed, and 9% of a first load's
    # wall time (measured at 100k contacts, bench/README.md). Every location id written comes from the
    # writer's own table of the locations it read or created first (``IndexWriter.ensure_locations``),
    # and the product never deletes a location; deleting one elsewhere (the admin) still goes through
    # Django's on_delete rules. The references to the contact itself stay checked.
    location = models.ForeignKey(
        Location, on_delete=models.PROTECT, related_name="contacts", db_index=False, db_constraint=False
    )
    location_uids = models.JSONField(default=list, blank=True, help_text="every location uid, home first")
    name = models.CharField(max_length=500, blank=True, default="")
    normalized_name = models.CharField(max_length=500, blank=True, default="")
    channels = models.JSONField(
        default=list,
        blank=True,
        help_text="[{type, identifier, label, marketingOptedInLocationUids, transactionalOptedOutAt}]",
    )
    tags = models.JSONField(default=list, blank=True, help_text="[{uid, label}]")
    attributes = models.JSONField(default=list, blank=True, help_text="[{uid, label, value, dataType}]")
    address = models.JSONField(null=True, blank=True, help_text="Podium's address object")
    conversations = models.JSONField(default=list, blank=True, help_text="conversation uids")
    field_count = models.PositiveIntegerField(default=0)
    marketing_opt_out = models.BooleanField(default=False)
    sms_opt_out = models.BooleanField(default=False)
    email_opt_out = models.BooleanField(default=False)
    conversation_count = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(null=True, blank=True, help_text="Podium's updatedAt when indexed")
    deleted_at = models.DateTimeField(null=True, blank=True)
    merged_into_uid = models.CharField(max_length=64, blank=True, default="")
    indexed_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["uid"], name="dedup_contact_uid_key")]
        indexes = [
            models.Index(fields=["location", "deleted_at"], name="contact_loc_deleted"),
            models.Index(fields=["merged_into_uid"], name="contact_merged_into"),
            # Deleted contacts, newest first: the page reads a few entries of this small index instead
            # of filtering and sorting a million contacts (and counts the retired ones alone).
            models.Index(
                fields=["-deleted_at", "-id"],
                condition=Q(deleted_at__isnull=False) | ~Q(merged_into_uid=""),
                name="contact_retired_order",
            ),
        ]
        permissions = [("restore_contact", "Can restore a soft-deleted contact in Podium")]

    def __str__(self) -> str:
        return self.uid

    @property
    def is_active(self) -> bool:
        """Neither deleted nor merged away: the only contacts that may join a cluster."""
        return self.deleted_at is None and not self.merged_into_uid

    @property
    def opt_outs(self) -> dict[str, bool]:
        return {
            "marketingOptOut": self.marketing_opt_out,
            "smsOptOut": self.sms_opt_out,
            "emailOptOut": self.email_opt_out,
        }

    @property
    def all_location_uids(self) -> list[str]:
        """Every location of the contact, home first (the home alone for rows indexed before v4)."""
        return list(self.location_uids) or [self.location.uid]


class ContactLocation(models.Model):
    """A location a contact belongs to (Podium lets a contact belong to several), for scoping queries."""

    # The two composite indexes below lead with each column, so neither needs an index of its own
    # (each one more would cost an insertion per row written: a first load writes millions).
    contact = models.ForeignKey(
        Contact, on_delete=models.CASCADE, related_name="contact_locations", db_index=False
    )
    # Unchecked by the database, like every index table's location (see ``Contact.location``).
    location = models.ForeignKey(
        Location, on_delete=models.CASCADE, related_name="+", db_index=False, db_constraint=False
    )

    class Meta:
        constraints = [models.UniqueConstraint(fields=["contact", "location"], name="uniq_contact_location")]
        indexes = [models.Index(fields=["location", "contact"], name="contactloc_loc_contact")]

    def __str__(self) -> str:
        return f"{self.contact_id} in {self.location_id}"


class ContactKey(models.Model):
    """A natural key of a contact: the E.164 of a valid phone, or a normalized email.

    Kept in its own table so detection is an indexed scan over keys; ``location`` is copied from the
    contact so the within-location grouping uses the (key, location) index alone.
    """

    PHONE = "PHONE"
    EMAIL = "EMAIL"
    KIND_CHOICES = [(PHONE, "Phone"), (EMAIL, "Email")]

    # uniq_contact_key leads with the contact, contactkey_key_loc with the key: neither needs an index
    # of its own (each costs an insertion per key row written).
    contact = models.ForeignKey(Contact, on_delete=models.CASCADE, related_name="keys", db_index=False)
    # Unchecked by the database, like every index table's location (see ``Contact.location``).
    location = models.ForeignKey(Location, on_delete=models.CASCADE, related_name="+", db_constraint=False)
    kind = models.CharField(max_length=5, choices=KIND_CHOICES)
    key = models.CharField(max_length=320)
    raw = models.CharField(max_length=500, help_text="the channel identifier as typed")
    extension = models.CharField(max_length=40, blank=True, default="")

    class Meta:
        constraints = [models.UniqueConstraint(fields=["contact", "kind", "key"], name="uniq_contact_key")]
        indexes = [
            models.Index(fields=["key", "location"], name="contactkey_key_loc"),
        ]

    def __str__(self) -> str:
        return f"{self.kind}:{self.key}"


class UncategorizedPhone(models.Model):
    """A phone that could not become a natural key, waiting for a person to fix it in Podium."""

    # uniq_uncategorized_phone leads with the contact and uncat_loc_code with the location.
    contact = models.ForeignKey(
        Contact, on_delete=models.CASCADE, related_name="uncategorized_phones", db_index=False
    )
    # Unchecked by the database, like every index table's location (see ``Contact.location``).
    location = models.ForeignKey(
        Location, on_delete=models.CASCADE, related_name="+", db_index=False, db_constraint=False
    )
    raw = models.CharField(max_length=500)
    code = models.CharField(max_length=20, help_text="ERR_DEDUP_001 or ERR_DEDUP_002")
    reason = models.CharField(max_length=300)
    region = models.CharField(max_length=2, help_text="the default region it was parsed with")
    first_seen_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["contact", "raw"], name="uniq_uncategorized_phone")]
        indexes = [
            models.Index(fields=["location", "code"], name="uncat_loc_code"),
            # The page's order (newest first) read off an index instead of sorting every phone.
            models.Index(fields=["-first_seen_at", "-id"], name="uncat_newest"),
        ]

    def __str__(self) -> str:
        return f"{self.code} on {self.contact_id}"


class ScanRun(models.Model):
    """One scan job: its scope, progress counters and timings, updated as it goes.

    At most one queued or running scan per ``scope_key`` (a database constraint), so a second scan of
    the same scope is refused with ``ERR_DEDUP_014`` naming the holder.
    """

    FULL = "full"
    INCREMENTAL = "incremental"
    FILE = "file"
    # Re-parses indexed contacts after their location's region changed; reads the index, not Podium.
    REPARSE = "reparse"
    KIND_CHOICES = [(FULL, "Full"), (INCREMENTAL, "Incremental"), (FILE, "Export file"), (REPARSE, "Re-parse")]

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    STATE_CHOICES = [(QUEUED, "Queued"), (RUNNING, "Running"), (SUCCEEDED, "Succeeded"), (FAILED, "Failed")]
    ACTIVE_STATES = (QUEUED, RUNNING)

    kind = models.CharField(max_length=12, choices=KIND_CHOICES, default=FULL)
    scope = models.JSONField(default=list, blank=True, help_text="location uids; empty = every location")
    scope_key = models.CharField(max_length=300, help_text="canonical scope, for the one-run-per-scope rule")
    source_file = models.CharField(max_length=500, blank=True, default="")
    state = models.CharField(max_length=10, choices=STATE_CHOICES, default=QUEUED)
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    holder = models.CharField(max_length=200, blank=True, default="", help_text="who runs it: user or worker")
    pages = models.PositiveIntegerField(default=0)
    contacts_seen = models.PositiveIntegerField(default=0)
    contacts_total = models.PositiveIntegerField(null=True, blank=True, help_text="estimate, for the ETA")
    invalid_phones = models.PositiveIntegerField(default=0)
    rejected_count = models.PositiveIntegerField(default=0, help_text="records set aside as unreadable")
    clusters_found = models.PositiveIntegerField(default=0)
    auto_clusters = models.PositiveIntegerField(default=0)
    duplicate_rate = models.FloatField(
        null=True, blank=True, help_text="share of indexed contacts in a cluster"
    )
    checkpoint = models.JSONField(default=dict, blank=True, help_text="per-location cursor and watermark")
    error_code = models.CharField(max_length=20, blank=True, default="")
    error_message = models.TextField(blank=True, default="")
    created_at = models.DateTimeField(default=timezone.now)
    started_at = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["scope_key"],
                condition=Q(state__in=("queued", "running")),
                name="one_active_scan_per_scope",
            )
        ]
        permissions = [("run_scan", "Can start a scan")]

    def __str__(self) -> str:
        return f"scan #{self.pk} {self.kind} {self.state}"

    @property
    def is_active(self) -> bool:
        return self.state in self.ACTIVE_STATES

    @property
    def elapsed_seconds(self) -> float:
        if not self.started_at:
            return 0.0
        end = self.finished_at or timezone.now()
        return max((end - self.started_at).total_seconds(), 0.0)

    @property
    def rate(self) -> float:
        """Contacts indexed per second so far."""
        elapsed = self.elapsed_seconds
        return self.contacts_seen / elapsed if elapsed > 0 else 0.0

    @property
    def progress(self) -> float | None:
        """0..1 when the total is known."""
        if not self.contacts_total:
            return 1.0 if self.state == self.SUCCEEDED else None
        return min(self.contacts_seen / self.contacts_total, 1.0)

    @property
    def eta_seconds(self) -> float | None:
        if not self.contacts_total or not self.rate or not self.is_active:
            return None
        return max(self.contacts_total - self.contacts_seen, 0) / self.rate


class RejectedRecord(models.Model):
    """A record a scan could not index, kept with its reason and raw text for an admin to look at.

    A scan never stops for one bad record: it sets the record aside here, indexes the rest and ends
    "completed with N rejected". ``raw`` is the record as read (a file line, or the JSON Podium sent),
    cut to a bounded size and with characters a database cannot store escaped.
    """

    RAW_MAX = 20_000

    scan_run = models.ForeignKey(
        ScanRun, null=True, blank=True, on_delete=models.CASCADE, related_name="rejected"
    )
    source = models.CharField(max_length=500, blank=True, default="", help_text="file path, or 'podium'")
    line_number = models.PositiveIntegerField(null=True, blank=True)
    contact_uid = models.CharField(max_length=64, blank=True, default="")
    reason = models.TextField()
    raw = models.TextField(blank=True, default="")
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        where = f"line {self.line_number}" if self.line_number else self.contact_uid or "record"
        return f"rejected {where}"


class Cluster(models.Model):
    """A proposed set of contacts that are one person, with its score and its fate.

    ``cluster_id`` is derived from the sorted member uids, so it is stable across rescans while the
    membership is unchanged; a changed membership supersedes the old row (kept, not deleted).
    """

    OPEN = "open"
    APPROVED = "approved"
    MERGING = "merging"
    MERGED = "merged"
    REJECTED = "rejected"
    SUPERSEDED = "superseded"
    FAILED = "failed"
    STATUS_CHOICES = [
        (OPEN, "Open"),
        (APPROVED, "Approved"),
        (MERGING, "Merging"),
        (MERGED, "Merged"),
        (REJECTED, "Rejected"),
        (SUPERSEDED, "Superseded"),
        (FAILED, "Failed"),
    ]

    AUTO = "auto"
    REVIEW = "review"
    CROSS = "cross"
    KIND_CHOICES = [(AUTO, "Auto-mergeable"), (REVIEW, "Review"), (CROSS, "Cross-location")]

    cluster_id = models.CharField(max_length=40, unique=True)
    natural_keys = models.JSONField(default=list)
    # The cluster tables' references are kept by the application, not checked by the database
    # (``db_constraint=False``, here and on ``ClusterMember`` / ``ClusterLocation``): detection writes
    # hundreds of thousands of rows at once, and PostgreSQL checks a foreign key with one query per
    # row (about 15 µs each: 40 s for a million contacts' clusters). Every row written points at rows
    # read in the same transaction; clusters and locations are never deleted by the product (clusters
    # are superseded), contacts only soft-deleted; the ORM still applies ``on_delete`` (cascade,
    # protect) on every delete it makes.
    location = models.ForeignKey(
        Location,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="clusters",
        help_text="empty for a cross-location cluster",
        db_constraint=False,
        db_index=False,  # the (location, status) index serves every lookup by location
    )
    locations: models.ManyToManyField[Location, ClusterLocation] = models.ManyToManyField(
        Location, related_name="clusters_touching", blank=True, through="ClusterLocation"
    )
    cross_location = models.BooleanField(default=False)
    kind = models.CharField(max_length=6, choices=KIND_CHOICES, default=REVIEW)
    confidence = models.DecimalField(max_digits=4, decimal_places=2, default=Decimal("0"))
    auto_merge = models.BooleanField(default=False)
    status = models.CharField(max_length=12, choices=STATUS_CHOICES, default=OPEN)
    reasons = models.JSONField(default=list, blank=True)
    pair_scores = models.JSONField(default=list, blank=True, help_text="[{a, b, score, reasons, conflict}]")
    member_count = models.PositiveIntegerField(default=0)
    suggested_primary_uid = models.CharField(max_length=64, blank=True, default="")
    chosen_primary_uid = models.CharField(
        max_length=64, blank=True, default="", help_text="a reviewer's choice; review clusters only"
    )
    superseded_by = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.SET_NULL, related_name="supersedes"
    )
    policy_version = models.PositiveIntegerField(
        default=1, help_text="the Policy.scoring_version this cluster was scored with"
    )
    scan_run = models.ForeignKey(
        ScanRun, null=True, blank=True, on_delete=models.SET_NULL, related_name="+", db_constraint=False
    )
    decided_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    decided_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        indexes = [
            # The queue by kind in its order. Its location rides along so a manager's page is filtered
            # on the index alone (an index-only scan), never by fetching each skipped cluster's row.
            models.Index(fields=["status", "kind", "confidence", "id", "location"], name="cluster_kind_queue_order"),
            models.Index(fields=["location", "status"], name="cluster_loc_status"),
            # The review queue's default order (confidence, then id) read straight off an index, so a
            # page of 250,000 open clusters costs a few index entries instead of a sort of the table;
            # the location for the same reason as above.
            models.Index(fields=["status", "confidence", "id", "location"], name="cluster_queue_order_loc"),
            # What "approve all matching" counts: open auto-mergeable clusters, by location, on an index
            # of their own (the queue's indexes do not hold ``auto_merge``, so counting read every row).
            models.Index(
                fields=["location", "id"],
                condition=Q(status="open", kind="auto", auto_merge=True),
                name="cluster_approvable",
            ),
            # The open cross-location clusters (no own location), which the dashboard and the queue count
            # live: a few thousand entries instead of a walk of every open cluster.
            models.Index(fields=["id"], condition=Q(status="open", location__isnull=True), name="cluster_open_cross"),
        ]
        permissions = [
            ("approve_cluster", "Can approve a cluster for merging"),
            ("reject_cluster", "Can reject a cluster as different people"),
        ]

    def __str__(self) -> str:
        return self.cluster_id

    def get_absolute_url(self) -> str:
        """The cluster's page, addressed by its stable id (the one the CLI, exports and the audit show)."""
        from django.urls import reverse

        return reverse("cluster_detail", args=[self.cluster_id])

    @property
    def primary_uid(self) -> str:
        """The member that survives: a reviewer's choice (review clusters only) or the rule's."""
        if self.chosen_primary_uid and not self.auto_merge:
            return self.chosen_primary_uid
        return self.suggested_primary_uid


class ClusterMember(models.Model):
    """A contact in a cluster, with the ``updatedAt`` it had when the cluster was scored."""

    # Unchecked by the database, like the cluster's own references (see ``Cluster.location``).
    # No index of its own on ``cluster``: the unique (cluster, contact) index starts with it.
    cluster = models.ForeignKey(
        Cluster, on_delete=models.CASCADE, related_name="members", db_constraint=False, db_index=False
    )
    contact = models.ForeignKey(
        Contact, on_delete=models.PROTECT, related_name="memberships", db_constraint=False
    )
    location = models.ForeignKey(Location, on_delete=models.PROTECT, related_name="+", db_constraint=False)
    updated_at_when_scored = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["cluster", "contact"], name="uniq_cluster_member")]

    def __str__(self) -> str:
        return f"{self.contact_id} in {self.cluster_id}"


class ClusterLocation(models.Model):
    """A location a cluster touches: the table behind ``Cluster.locations`` (Django's own many-to-many
    table until its references stopped being checked by the database, see ``Cluster.location``)."""

    # No index of its own on ``cluster``: the unique (cluster, location) index starts with it.
    cluster = models.ForeignKey(Cluster, on_delete=models.CASCADE, db_constraint=False, db_index=False)
    location = models.ForeignKey(Location, on_delete=models.CASCADE, db_constraint=False)

    class Meta:
        db_table = "dedup_cluster_locations"
        unique_together = [("cluster", "location")]

    def __str__(self) -> str:
        return f"{self.cluster_id} touches {self.location_id}"


class ReviewDecision(models.Model):
    """A person's decision on a cluster, and the remembered "different people" pairs.

    A ``different_people`` row names one contact pair (uids sorted); detection never proposes that
    pair together again.
    """

    APPROVE = "approve"
    REJECT = "reject"
    DIFFERENT_PEOPLE = "different_people"
    CHANGE_PRIMARY = "change_primary"
    DECISION_CHOICES = [
        (APPROVE, "Approve"),
        (REJECT, "Reject"),
        (DIFFERENT_PEOPLE, "Different people"),
        (CHANGE_PRIMARY, "Change primary"),
    ]

    decision = models.CharField(max_length=20, choices=DECISION_CHOICES)
    cluster = models.ForeignKey(
        Cluster, null=True, blank=True, on_delete=models.SET_NULL, related_name="decisions"
    )
    uid_a = models.CharField(max_length=64, blank=True, default="")
    uid_b = models.CharField(max_length=64, blank=True, default="")
    primary_uid = models.CharField(max_length=64, blank=True, default="")
    note = models.TextField(blank=True, default="")
    decided_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    decided_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["uid_a", "uid_b"],
                condition=Q(decision="different_people"),
                name="uniq_different_people_pair",
            ),
            models.CheckConstraint(
                condition=~Q(decision="different_people") | (Q(uid_a__lt=models.F("uid_b")) & ~Q(uid_a="")),
                name="different_people_pair_sorted",
            ),
        ]
        indexes = [models.Index(fields=["decision", "uid_a"], name="decision_pair")]

    def __str__(self) -> str:
        return f"{self.decision} {self.uid_a} {self.uid_b}".strip()

    @staticmethod
    def sorted_pair(a: str, b: str) -> tuple[str, str]:
        return (a, b) if a < b else (b, a)


class MergeBatch(models.Model):
    """A group of merge operations started together (bulk approve, ``merge --all-auto``), for progress."""

    label = models.CharField(max_length=200)
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now)

    def __str__(self) -> str:
        return self.label


class MergeOperation(models.Model):
    """The durable state machine of one cluster's merge, written before each external call.

    ``pending → merging → merged → patched`` is the success path; the side exits are terminal
    (``failed_permanent``, ``re_index_required``) or need a person or a retry (``compliance_failed``,
    ``conflict_pending``, ``unreconcilable``).
    """

    PENDING = "pending"
    MERGING = "merging"
    MERGED = "merged"
    PATCHED = "patched"
    FAILED_PERMANENT = "failed_permanent"
    RE_INDEX_REQUIRED = "re_index_required"
    COMPLIANCE_FAILED = "compliance_failed"
    CONFLICT_PENDING = "conflict_pending"
    UNRECONCILABLE = "unreconcilable"
    STATE_CHOICES = [
        (PENDING, "Pending"),
        (MERGING, "Merging"),
        (MERGED, "Merged"),
        (PATCHED, "Patched"),
        (FAILED_PERMANENT, "Failed (permanent)"),
        (RE_INDEX_REQUIRED, "Re-index required"),
        (COMPLIANCE_FAILED, "Compliance failed"),
        (CONFLICT_PENDING, "Conflict pending"),
        (UNRECONCILABLE, "Needs manual reconciliation"),
    ]
    TERMINAL_STATES = (PATCHED, FAILED_PERMANENT, RE_INDEX_REQUIRED)
    # States a worker picks up again by itself (compliance incidents retry until they hold).
    RESUMABLE_STATES = (PENDING, MERGING, MERGED, COMPLIANCE_FAILED, CONFLICT_PENDING)

    cluster = models.ForeignKey(Cluster, on_delete=models.PROTECT, related_name="operations")
    location = models.ForeignKey(
        Location,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="+",
        help_text="the cluster's own location (empty for a cross-location cluster), copied when created so "
        "the history is filtered by location without reading every cluster (access.operations_visible_to)",
    )
    batch = models.ForeignKey(
        MergeBatch, null=True, blank=True, on_delete=models.SET_NULL, related_name="operations"
    )
    state = models.CharField(max_length=20, choices=STATE_CHOICES, default=PENDING)
    NATIVE = "native"
    CONSOLIDATE = "consolidate"
    STRATEGY_CHOICES = [(NATIVE, "Podium's merge (capability)"), (CONSOLIDATE, "Consolidate (published API)")]

    primary_uid = models.CharField(max_length=64)
    duplicate_uids = models.JSONField(default=list)
    strategy = models.CharField(max_length=12, choices=STRATEGY_CHOICES, default=CONSOLIDATE)
    plan = models.JSONField(default=dict, help_text="the merge plan, committed before any call")
    accepted_losses = models.JSONField(
        default=list, blank=True, help_text="losses a person accepted when approving, as the plan named them"
    )
    steps = models.JSONField(
        default=dict, blank=True, help_text="durable progress inside a state: retirement handles, deletions"
    )
    request_count = models.PositiveIntegerField(default=0, help_text="requests sent to Podium for this merge")
    member_snapshot = models.JSONField(
        default=dict, blank=True, help_text="uid → updatedAt and opt-outs when planned"
    )
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    automatic = models.BooleanField(default=False)
    attempts = models.PositiveIntegerField(default=0)
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    error_code = models.CharField(max_length=20, blank=True, default="")
    last_error = models.TextField(blank=True, default="")
    evidence = models.JSONField(default=dict, blank=True, help_text="what reconciliation saw")
    request_ids = models.JSONField(default=list, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(auto_now=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["cluster"],
                condition=~Q(state__in=("patched", "failed_permanent", "re_index_required")),
                name="one_live_operation_per_cluster",
            )
        ]
        indexes = [
            models.Index(fields=["state", "next_attempt_at"], name="mergeop_state_next"),
            # The merge history, newest first, whole or by state: read off an index, not sorted.
            models.Index(fields=["-created_at", "-id"], name="mergeop_newest"),
            models.Index(fields=["state", "-created_at", "-id"], name="mergeop_state_newest"),
        ]
        permissions = [
            ("retry_operation", "Can retry a compliance-failed merge"),
            ("resolve_operation", "Can resolve an unreconcilable merge"),
        ]

    def __str__(self) -> str:
        return f"merge #{self.pk} {self.state}"

    def save(self, *args: Any, **kwargs: Any) -> None:
        if self._state.adding and self.location_id is None and self.cluster_id is not None:
            # A cluster's own location never changes (a new membership is a new cluster).
            self.location_id = Cluster.objects.filter(pk=self.cluster_id).values_list("location_id", flat=True).first()
        super().save(*args, **kwargs)

    @property
    def is_terminal(self) -> bool:
        return self.state in self.TERMINAL_STATES


class RestoreRecord(models.Model):
    """A contact restored after a merge; three rounds for one contact is a restore loop (ERR_DEDUP_013)."""

    UNHIDDEN = "unhidden"
    RECREATED = "recreated"

    contact_uid = models.CharField(max_length=64, db_index=True)
    merged_into_uid = models.CharField(max_length=64, blank=True, default="")
    method = models.CharField(max_length=10, default=UNHIDDEN, help_text="unhidden (capability) or recreated")
    new_uid = models.CharField(
        max_length=64,
        blank=True,
        default="",
        help_text="the re-created contact's uid (Podium gives a new one)",
    )
    not_restored = models.JSONField(
        default=list, blank=True, help_text="values that could not be put back, why"
    )
    operation = models.ForeignKey(
        MergeOperation, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    opt_outs_applied = models.JSONField(default=dict)
    marked_different_people = models.BooleanField(default=False)
    restored_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    restored_at = models.DateTimeField(default=timezone.now)

    def __str__(self) -> str:
        return f"restore of {self.contact_uid}"


class AppendOnlyQuerySet(models.QuerySet["AuditEvent"]):
    """Bulk updates and deletes are refused: the audit log only grows."""

    def update(self, **kwargs: Any) -> int:
        raise AuditImmutableError("audit events cannot be updated")

    def delete(self) -> tuple[int, dict[str, int]]:
        raise AuditImmutableError("audit events cannot be deleted")


class AuditImmutableError(Exception):
    """Raised on any attempt to change or remove an audit event."""


class AuditEvent(models.Model):
    """One append-only, hash-chained record of something the product or a person did.

    ``hash`` covers ``prev_hash`` and the event's content, keyed with ``AUDIT_HMAC_KEY`` (see
    ``dedup.auditchain``), so editing, forging or removing an event breaks the chain and cannot be
    hidden by recomputing hashes without the key; ``manage.py verify_audit`` names the first broken
    link, and against an exported checkpoint also detects a truncated or rewritten log. On PostgreSQL
    a trigger refuses UPDATE, DELETE and TRUNCATE as well.
    """

    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    event_type = models.CharField(max_length=60, db_index=True)
    actor = models.CharField(max_length=200, help_text="user:NAME or worker:NAME or system")
    actor_user_id = models.IntegerField(null=True, blank=True, db_index=True)
    cluster_ref = models.CharField(max_length=40, blank=True, default="", db_index=True)
    operation_ref = models.BigIntegerField(null=True, blank=True, db_index=True)
    location_uids = models.JSONField(default=list, blank=True)
    subjects = models.TextField(
        blank=True, default="", help_text="space-framed contact uids and natural keys, for search"
    )
    payload = models.JSONField(default=dict, blank=True)
    prev_hash = models.CharField(max_length=64)
    hash = models.CharField(max_length=64, unique=True)
    chain_version = models.PositiveSmallIntegerField(
        default=auditchain.CURRENT_VERSION, help_text="1: unkeyed SHA-256 (before keying); 2: HMAC-SHA-256"
    )

    objects: ClassVar[models.Manager[AuditEvent]] = AppendOnlyQuerySet.as_manager()

    GENESIS = auditchain.GENESIS

    class Meta:
        ordering = ["id"]
        permissions = [("export_audit", "Can export the audit log")]

    def __str__(self) -> str:
        return f"#{self.pk} {self.event_type} by {self.actor}"

    def save(self, *args: Any, **kwargs: Any) -> None:
        if self.pk is not None or not self._state.adding:
            raise AuditImmutableError("audit events cannot be updated")
        super().save(*args, **kwargs)

    def delete(self, *args: Any, **kwargs: Any) -> tuple[int, dict[str, int]]:
        raise AuditImmutableError("audit events cannot be deleted")

    def content(self) -> dict[str, Any]:
        """The fields the hash covers, in a canonical JSON-ready form."""
        return auditchain.content_of(self)

    def compute_hash(self) -> str:
        """The hash this event must carry: keyed (HMAC) for version 2, SHA-256 for the legacy version 1."""
        return auditchain.event_hash(self)


class Policy(models.Model):
    """The deployment's policy: one row, edited by admins, every change audited."""

    default_region = models.CharField(max_length=2, default="AU")
    auto_merge_threshold = models.DecimalField(max_digits=3, decimal_places=2, default=Decimal("0.80"))
    cross_location_auto_merge = models.BooleanField(default=False)
    email_secondary_key = models.BooleanField(default=False)
    scan_interval_minutes = models.PositiveIntegerField(default=240)
    rate_limit_per_minute = models.PositiveIntegerField(default=300, help_text="Podium request budget")
    scoring_version = models.PositiveIntegerField(
        default=1, help_text="moves on every change of a field that decides how clusters are scored"
    )
    updated_at = models.DateTimeField(auto_now=True)

    #: The fields that decide a cluster's kind: changing one re-evaluates every open cluster.
    SCORING_FIELDS = ("auto_merge_threshold", "cross_location_auto_merge", "email_secondary_key")

    class Meta:
        verbose_name_plural = "policy"
        constraints = [
            models.CheckConstraint(
                condition=Q(auto_merge_threshold__gte=Decimal("0.60"))
                & Q(auto_merge_threshold__lte=Decimal("1.00")),
                name="policy_threshold_range",
            ),
            models.CheckConstraint(
                condition=Q(scan_interval_minutes__gte=5), name="policy_scan_interval_min"
            ),
        ]
        permissions = [("change_settings", "Can change the deployment policy")]

    def __str__(self) -> str:
        return "Deployment policy"

    @classmethod
    def current(cls) -> Policy:
        """The single policy row, created with the defaults on first use."""
        policy, _ = cls.objects.get_or_create(
            pk=1, defaults={"default_region": settings.PODIUM_DEFAULT_REGION}
        )
        return policy


# --- real time: Podium's webhook deliveries, integrations' API tokens, policy re-evaluation -------------


class WebhookRegistration(models.Model):
    """The webhook this deployment registered with Podium (``manage.py podium_webhook register``).

    The secret Podium signs deliveries with is either in the environment (``PODIUM_WEBHOOK_SECRET``;
    nothing stored here) or generated at registration and kept here encrypted (``dedup.realtime.secrets``).
    At most one registration is active.
    """

    STORED = "stored"
    ENVIRONMENT = "environment"
    SECRET_SOURCES = [(STORED, "Stored encrypted"), (ENVIRONMENT, "PODIUM_WEBHOOK_SECRET")]
    UNKNOWN = "unknown"
    ENABLED = "enabled"
    DISABLED = "disabled"
    MISSING = "missing"
    PODIUM_STATES = [
        (UNKNOWN, "Not checked yet"),
        (ENABLED, "Enabled"),
        (DISABLED, "Disabled by Podium"),
        (MISSING, "No longer at Podium"),
    ]

    podium_uid = models.CharField(max_length=64, blank=True, default="")
    url = models.CharField(max_length=500)
    event_types = models.JSONField(default=list, blank=True)
    organization_uid = models.CharField(max_length=64, blank=True, default="")
    secret_source = models.CharField(max_length=12, choices=SECRET_SOURCES, default=STORED)
    secret_encrypted = models.TextField(blank=True, default="", help_text="Fernet token; never the secret")
    active = models.BooleanField(default=True)
    podium_state = models.CharField(
        max_length=10, choices=PODIUM_STATES, default=UNKNOWN, help_text="as Podium reported it when last asked"
    )
    checked_at = models.DateTimeField(null=True, blank=True, help_text="when Podium was last asked")
    registered_by = models.CharField(max_length=200, blank=True, default="")
    created_at = models.DateTimeField(default=timezone.now)
    removed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.UniqueConstraint(fields=["active"], condition=Q(active=True), name="one_active_webhook")
        ]

    def __str__(self) -> str:
        return f"webhook {self.podium_uid or '?'} → {self.url}"


class WebhookDelivery(models.Model):
    """One delivery Podium made, stored before it is answered: applied at most once, by its key.

    ``delivery_key`` is ``event:<metadata.eventUid>`` when Podium sends one, else ``sha256:<hex of the raw
    body>``, so a repeated delivery finds its row. ``received → applied → done`` (the index written,
    then the touched natural keys re-detected); ``stale`` (older than what the index holds), ``ignored``
    (not a contact event) and ``failed`` (unreadable) end there. The raw body is kept only until it is
    applied, and for failed deliveries.
    """

    RECEIVED = "received"
    APPLIED = "applied"
    DONE = "done"
    STALE = "stale"
    IGNORED = "ignored"
    FAILED = "failed"
    STATUS_CHOICES = [
        (RECEIVED, "Received"),
        (APPLIED, "Applied, re-detection pending"),
        (DONE, "Applied"),
        (STALE, "Older than the index"),
        (IGNORED, "Not a contact event"),
        (FAILED, "Failed"),
    ]

    delivery_key = models.CharField(max_length=100, unique=True)
    event_type = models.CharField(max_length=40, blank=True, default="")
    contact_uid = models.CharField(max_length=64, blank=True, default="")
    status = models.CharField(max_length=10, choices=STATUS_CHOICES, default=RECEIVED)
    body = models.TextField(blank=True, default="")
    outcome = models.CharField(max_length=300, blank=True, default="")
    natural_keys = models.JSONField(default=list, blank=True, help_text="keys to re-detect (before and after)")
    contact_id = models.BigIntegerField(null=True, blank=True, help_text="the index row it touched")
    received_at = models.DateTimeField(default=timezone.now)
    applied_at = models.DateTimeField(null=True, blank=True)
    done_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-id"]
        indexes = [
            models.Index(fields=["status", "id"], name="webhookdelivery_status"),
            models.Index(fields=["received_at"], name="webhookdelivery_received"),
        ]

    def __str__(self) -> str:
        return f"delivery {self.delivery_key} {self.status}"


class WebhookDrainFlag(models.Model):
    """One row: a drain of stored deliveries is queued and has not started yet.

    A receiver enqueues a drain only when it flips ``requested`` from false to true, and a drain clears it
    before it reads the stored deliveries, so a burst of deliveries costs a couple of tasks, not one each.
    """

    requested = models.BooleanField(default=False)
    requested_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"drain requested: {self.requested}"


class WebhookRefusal(models.Model):
    """Deliveries refused before they were stored, counted per hour and reason (bounded, unlike a row
    per refusal, which a flood would turn into a flood of rows)."""

    UNSIGNED = "unsigned"
    BAD_SIGNATURE = "bad_signature"
    TOO_LARGE = "too_large"
    RATE_LIMITED = "rate_limited"

    hour = models.DateTimeField()
    reason = models.CharField(max_length=20)
    count = models.PositiveIntegerField(default=0)
    last_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["hour", "reason"], name="uniq_webhook_refusal_hour")]

    def __str__(self) -> str:
        return f"{self.count} {self.reason} at {self.hour:%Y-%m-%d %H}h"


class ApiToken(models.Model):
    """An integration's bearer token for the lookup API, scoped to locations, hashed at rest.

    The token itself is shown once when created; only its SHA-256 (``token_hash``) and its first
    characters (``prefix``, to recognise it in a list) are kept.
    """

    name = models.CharField(max_length=100)
    prefix = models.CharField(max_length=16)
    token_hash = models.CharField(max_length=64, unique=True)
    location_uids = models.JSONField(default=list, help_text="the locations this token may look up")
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now)
    revoked_at = models.DateTimeField(null=True, blank=True)
    revoked_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    last_used_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"API token {self.name} ({self.prefix}…)"

    @property
    def is_active(self) -> bool:
        return self.revoked_at is None


class PolicyReevaluation(models.Model):
    """The background re-evaluation of every open cluster after a scoring field of the policy changed.

    Until it finishes, clusters scored under an older ``Policy.scoring_version`` are neither merged
    automatically nor bulk-approved (``dedup.merge.decisions``).
    """

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    SUPERSEDED = "superseded"
    STATE_CHOICES = [
        (QUEUED, "Queued"),
        (RUNNING, "Running"),
        (SUCCEEDED, "Finished"),
        (FAILED, "Failed"),
        (SUPERSEDED, "Superseded by a later change"),
    ]
    ACTIVE_STATES = (QUEUED, RUNNING)

    policy_version = models.PositiveIntegerField()
    changes = models.JSONField(default=dict, blank=True)
    state = models.CharField(max_length=10, choices=STATE_CHOICES, default=QUEUED)
    phase = models.CharField(max_length=100, blank=True, default="")
    total = models.PositiveIntegerField(default=0, help_text="open clusters to re-evaluate")
    done = models.PositiveIntegerField(default=0)
    error = models.TextField(blank=True, default="")
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"re-evaluation for policy v{self.policy_version} {self.state}"

    @property
    def is_active(self) -> bool:
        return self.state in self.ACTIVE_STATES

    @property
    def progress(self) -> float | None:
        """0..1 when the total is known."""
        if not self.total:
            return 1.0 if self.state == self.SUCCEEDED else None
        return min(self.done / self.total, 1.0)


class RateBudget(models.Model):
    """The Podium request budget shared by every process without Redis (``dedup.budget``).

    One row per set of Podium credentials, named by a hash of them (never the secret). The pacing rule
    runs in one ``UPDATE … RETURNING`` statement on this row; ``last_*`` columns carry that statement's
    answer back. ``granted`` and ``rate_limited`` count slots handed out and Podium's refusals.
    """

    key = models.CharField(max_length=64, primary_key=True)
    tat = models.FloatField(default=0.0, help_text="when the next request may start (epoch seconds)")
    blocked_until = models.FloatField(default=0.0, help_text="end of Podium's last rate_limit (epoch seconds)")
    last_now = models.FloatField(default=0.0)
    last_start = models.FloatField(default=0.0)
    last_granted = models.BooleanField(default=False)
    granted = models.BigIntegerField(default=0)
    rate_limited = models.BigIntegerField(default=0)

    def __str__(self) -> str:
        return f"Podium budget {self.key[:8]}…"


class WorkerHeartbeat(models.Model):
    """A django-q2 worker process saying it is alive, every few seconds (``dedup.heartbeat``).

    ``task`` names the task in hand (empty while idle). A row whose ``beat_at`` is older than
    ``dedup.heartbeat.STALE_AFTER`` is a worker that died without saying so; ``stopped_at`` is set
    by a worker that stopped cleanly.
    """

    name = models.CharField(max_length=200, unique=True, help_text="host:pid of the worker process")
    host = models.CharField(max_length=200)
    pid = models.PositiveIntegerField()
    cluster = models.CharField(max_length=200, blank=True, default="", help_text="host:pid of its qcluster")
    started_at = models.DateTimeField(default=timezone.now)
    beat_at = models.DateTimeField(default=timezone.now, db_index=True)
    task = models.CharField(max_length=200, blank=True, default="")
    task_started_at = models.DateTimeField(null=True, blank=True)
    tasks_done = models.PositiveIntegerField(default=0)
    stopped_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"worker {self.name}"


class ContactTally(models.Model):
    """Changes to the number of active contacts, per home location and set of locations (``dedup.tallies``).

    On PostgreSQL, statement-level triggers on ``dedup_contact`` append one row per (home, locations)
    group a statement changed, with the signed change in active contacts; the dashboard sums the rows
    instead of counting a million contacts. Appending (never updating a shared row) keeps concurrent
    scans from waiting on each other; reads fold the rows together now and then. Not used on SQLite.
    """

    location_id = models.BigIntegerField(help_text="the contact's home location")
    location_uids = models.TextField(help_text="the contact's location_uids as JSON text")
    n = models.BigIntegerField()

    class Meta:
        indexes = [models.Index(fields=["location_id"], name="contacttally_loc")]

    def __str__(self) -> str:
        return f"{self.n:+d} contacts at {self.location_id}"


class ClusterTally(models.Model):
    """Changes to the number of open within-location clusters, per location and kind (``dedup.tallies``).

    Kept like ``ContactTally`` by triggers on ``dedup_cluster`` (PostgreSQL only). Cross-location
    clusters (no own location) are few and are counted live.
    """

    location_id = models.BigIntegerField()
    kind = models.CharField(max_length=6)
    n = models.BigIntegerField()

    class Meta:
        indexes = [models.Index(fields=["location_id", "kind"], name="clustertally_loc_kind")]

    def __str__(self) -> str:
        return f"{self.n:+d} open {self.kind} clusters at {self.location_id}"
