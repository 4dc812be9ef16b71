"""Item 17 of issue 12: approve every auto cluster matching the queue's filter (a count, a confirmation, a
background job), select all on the page, a bulk bar that stays in view, and the next cluster after a decision."""

from __future__ import annotations

from typing import Any
from unittest import mock

from django.db import connection
from django.test.utils import CaptureQueriesContext

from dedup.models import AuditEvent, Cluster, MergeBatch, MergeOperation
from dedup.queue import QueueFilter, approve_matching
from tests.dashboard_base import BURLEIGH, SYDNEY, DashboardTestCase, build_cluster, household, same_person
from tests.queue_helpers import bulk_auto_clusters


def _no_merge(operation_id: int) -> None:
    """Merges are not run: these tests are about which clusters get a pending merge, not the merge itself."""


class ApproveMatchingTestCase(DashboardTestCase):
    household: Cluster
    cross: Cluster
    second_sydney: Cluster

    @classmethod
    def setUpTestData(cls) -> None:
        super().setUpTestData()
        cls.household = build_cluster(household(SYDNEY, "ct_200"))
        cls.cross = build_cluster([same_person(SYDNEY, "ct_500")[0], same_person(BURLEIGH, "ct_510")[1]])
        cls.second_sydney = build_cluster(same_person(SYDNEY, "ct_110", name="Wei Chen"))

    def confirm_page(self, **params: str) -> Any:
        return self.client.get("/clusters/approve-matching/", params)

    def post(self, client: Any = None, **data: Any) -> Any:
        with mock.patch("dedup.merge.decisions.enqueue", _no_merge), self.captureOnCommitCallbacks(execute=True):
            return (client or self.client).post("/clusters/approve-matching/", data)

    def test_the_confirmation_counts_only_what_this_person_may_approve_together(self) -> None:
        self.login(self.sydney_manager)
        response = self.confirm_page()
        assert response.status_code == 200
        # Sydney's two auto clusters; the household (review) and the cross-location one are left for review.
        assert response.context["count"] == 2
        assert response.context["others"] == 2
        self.login(self.burleigh_manager)
        assert self.confirm_page().context["count"] == 1

    def test_the_filter_narrows_the_count(self) -> None:
        self.login(self.sydney_manager)
        assert self.confirm_page(q="wei chen").context["count"] == 1
        assert self.confirm_page(kind="review").context["count"] == 0
        assert self.confirm_page(min_confidence="1.00", max_confidence="1.00").context["count"] == 2

    def test_confirming_approves_exactly_those_clusters_and_audits_the_request(self) -> None:
        self.login(self.sydney_manager)
        page = self.confirm_page(q="garcia")
        assert page.context["count"] == 1
        response = self.post(filters=page.context["filter_query"], expected=1, upto=page.context["upto"], confirm="1")
        assert response.status_code == 302 and response["Location"].startswith("/#batch-")
        batch = MergeBatch.objects.get()
        ops = MergeOperation.objects.filter(batch=batch)
        assert [op.cluster_id for op in ops] == [self.sydney_cluster.pk]
        for untouched in (self.second_sydney, self.household, self.cross, self.burleigh_cluster):
            untouched.refresh_from_db()
            assert untouched.status == Cluster.OPEN
        requested = AuditEvent.objects.get(event_type="merge.bulk_requested")
        assert requested.actor == "user:sydney_manager"
        assert requested.payload["count"] == 1 and requested.payload["filters"]["q"] == "garcia"
        done = AuditEvent.objects.get(event_type="merge.batch")
        assert done.payload["batch"] == batch.pk and done.payload["allMatching"] is True

    def test_a_count_that_grew_since_the_confirmation_asks_again(self) -> None:
        self.login(self.sydney_manager)
        page = self.confirm_page()
        response = self.post(filters="", expected=1, upto=page.context["upto"], confirm="1")
        assert response.status_code == 200
        assert "More clusters match than when you looked" in response.content.decode()
        assert not MergeBatch.objects.exists()

    def test_clusters_found_after_the_confirmation_are_not_included(self) -> None:
        self.login(self.sydney_manager)
        page = self.confirm_page()
        later = build_cluster(same_person(SYDNEY, "ct_120", name="Olivia Brown"))
        self.post(filters="", expected=page.context["count"], upto=page.context["upto"], confirm="1")
        later.refresh_from_db()
        assert later.status == Cluster.OPEN
        assert MergeOperation.objects.count() == 2

    def test_without_the_confirmation_box_nothing_happens(self) -> None:
        self.login(self.sydney_manager)
        page = self.confirm_page()
        response = self.post(filters="", expected=2, upto=page.context["upto"])
        assert response.status_code == 200 and not MergeBatch.objects.exists()

    def test_the_auditor_gets_403_and_anonymous_signs_in(self) -> None:
        self.login(self.auditor)
        assert self.confirm_page().status_code == 403
        assert self.post(filters="", expected=2, upto=10**6, confirm="1").status_code == 403
        self.client.logout()
        self.assert_login_redirect(self.confirm_page(), "/")

    def test_a_post_without_csrf_is_refused(self) -> None:
        client = self.csrf_client(self.sydney_manager)
        response = self.post(client, filters="", expected=2, upto=10**6, confirm="1")
        assert response.status_code == 403
        assert not MergeBatch.objects.exists()

    def test_rights_are_checked_again_when_the_job_runs(self) -> None:
        batch = MergeBatch.objects.create(label="test")
        # The Burleigh manager cannot have Sydney's clusters approved whatever the job is handed.
        with mock.patch("dedup.merge.decisions.enqueue", _no_merge):
            result = approve_matching(batch.pk, self.burleigh_manager.pk, QueueFilter(status="open").to_dict(), 10**9)
        assert result == {"started": 1, "refused": 0}
        assert list(MergeOperation.objects.values_list("cluster_id", flat=True)) == [self.burleigh_cluster.pk]

    def test_the_queue_offers_select_all_and_all_matching_in_a_sticky_bar(self) -> None:
        self.login(self.sydney_manager)
        body = self.client.get("/clusters/", {"kind": "auto"}).content.decode()
        assert 'class="bulk-bar"' in body and "data-select-all" in body
        assert 'href="/clusters/approve-matching/?kind=auto&amp;status=open"' in body
        css = open("static/css/app.css", encoding="utf-8").read()
        assert ".bulk-bar { position: sticky; top: 0;" in css


class ApproveMatchingAtScaleTestCase(DashboardTestCase):
    """Thousands of matching clusters: the confirmation costs the same queries, the job reads in chunks."""

    def test_thousands_of_matching_clusters(self) -> None:
        bulk_auto_clusters(self.sydney, 300)
        self.login(self.sydney_manager)
        self.client.get("/clusters/approve-matching/")
        with CaptureQueriesContext(connection) as small:
            assert self.client.get("/clusters/approve-matching/").context["count"] == 301
        bulk_auto_clusters(self.sydney, 1700, start=300)
        bulk_auto_clusters(self.burleigh, 200, start=5000)
        with CaptureQueriesContext(connection) as large:
            page = self.client.get("/clusters/approve-matching/")
        assert page.context["count"] == 2001
        assert len(large.captured_queries) == len(small.captured_queries)

        # The job runs when the request's transaction commits (inline here: tests run tasks synchronously).
        longest = most_params = 0

        def measure(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
            nonlocal longest, most_params
            longest = max(longest, len(sql))
            most_params = max(most_params, 0 if many else len(params or ()))
            return execute(sql, params, many, context)

        with connection.execute_wrapper(measure), mock.patch("dedup.merge.decisions.enqueue", _no_merge), \
                self.captureOnCommitCallbacks(execute=True):
            response = self.client.post("/clusters/approve-matching/", {
                "filters": "", "expected": 2001, "upto": page.context["upto"], "confirm": "1"})
        assert response.status_code == 302
        assert MergeOperation.objects.filter(state=MergeOperation.PENDING).count() == 2001
        assert Cluster.objects.filter(location=self.burleigh, status=Cluster.OPEN).count() == 201
        # No query grows with the selection: the longest stays far below a 2,000-id IN list (~14,000 chars).
        assert longest < 8000, longest
        assert most_params < 500, most_params
