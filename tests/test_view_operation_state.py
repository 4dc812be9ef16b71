"""Item 4 of issue 12: the merge page follows its merge's state without a reload, and stops once it settles;
the dashboard's "merges today" moves while a batch runs."""

from __future__ import annotations

from django.utils import timezone

from dedup.models import MergeBatch, MergeOperation
from tests.dashboard_base import DashboardTestCase, make_operation


class OperationStateTestCase(DashboardTestCase):
    def state(self, op: MergeOperation, **headers: str) -> str:
        response = self.client.get(f"/history/{op.pk}/state/", headers=headers)
        assert response.status_code == 200
        return response.content.decode()

    def test_a_live_merge_polls_every_two_seconds(self) -> None:
        self.login(self.sydney_manager)
        for state in (MergeOperation.PENDING, MergeOperation.MERGING, MergeOperation.MERGED):
            op = make_operation(self.sydney_cluster, state)
            body = self.state(op)
            assert 'hx-trigger="every 2s"' in body, state
            assert f'hx-get="/history/{op.pk}/state/?seen={state}"' in body
            op.delete()

    def test_a_merge_waiting_for_its_retry_polls_slowly(self) -> None:
        self.login(self.sydney_manager)
        op = make_operation(self.sydney_cluster, MergeOperation.COMPLIANCE_FAILED)
        assert 'hx-trigger="every 10s"' in self.state(op)

    def test_a_settled_merge_stops_polling(self) -> None:
        self.login(self.sydney_manager)
        for state in (*MergeOperation.TERMINAL_STATES, MergeOperation.UNRECONCILABLE):
            op = make_operation(self.sydney_cluster, state, finished_at=timezone.now())
            body = self.state(op)
            assert "hx-trigger" not in body and "hx-get" not in body, state
            assert f'id="op-state">{op.get_state_display()}<' in body
            op.delete()

    def test_the_fragment_says_when_the_state_changed_under_the_page(self) -> None:
        self.login(self.sydney_manager)
        op = make_operation(self.sydney_cluster, MergeOperation.PATCHED, finished_at=timezone.now())
        changed = self.client.get(f"/history/{op.pk}/state/", {"seen": "pending"}).content.decode()
        assert "Reload" in changed
        same = self.client.get(f"/history/{op.pk}/state/", {"seen": "patched"}).content.decode()
        assert "Reload" not in same

    def test_the_merge_page_embeds_the_polling_fragment_while_live(self) -> None:
        self.login(self.sydney_manager)
        op = make_operation(self.sydney_cluster, MergeOperation.PENDING)
        body = self.client.get(f"/history/{op.pk}/").content.decode()
        assert f'hx-get="/history/{op.pk}/state/?seen=pending"' in body and 'hx-trigger="every 2s"' in body
        MergeOperation.objects.filter(pk=op.pk).update(state=MergeOperation.PATCHED, finished_at=timezone.now())
        assert "hx-trigger" not in self.client.get(f"/history/{op.pk}/").content.decode()

    def test_access(self) -> None:
        op = make_operation(self.sydney_cluster, MergeOperation.PENDING)
        self.login(self.burleigh_manager)
        assert self.client.get(f"/history/{op.pk}/state/").status_code == 404
        self.login(self.auditor)
        assert self.client.get(f"/history/{op.pk}/state/").status_code == 200
        self.client.logout()
        self.assert_login_redirect(self.client.get(f"/history/{op.pk}/state/"), "/")
        # An expired session's poll sends the whole page to sign in, not the form into the fragment.
        polled = self.client.get(f"/history/{op.pk}/state/", headers={"HX-Request": "true"})
        assert polled.status_code == 401 and polled["HX-Redirect"].startswith("/accounts/login/")


class DashboardLiveFiguresTestCase(DashboardTestCase):
    def test_merges_today_rides_along_with_the_progress_poll(self) -> None:
        batch = MergeBatch.objects.create(label="Approve 2 cluster(s)")
        make_operation(self.sydney_cluster, MergeOperation.PENDING, batch=batch)
        self.login(self.sydney_manager)
        dashboard = self.client.get("/").content.decode()
        assert '<span class="n" id="merges-today">0</span>' in dashboard
        body = self.client.get("/progress/", headers={"HX-Request": "true"}).content.decode()
        assert 'hx-trigger="every 2s"' in body  # a batch is running
        assert '<span class="n" id="merges-today" hx-swap-oob="true">0</span>' in body
        assert '<span class="n" id="open-auto" hx-swap-oob="true">1</span>' in body
        MergeOperation.objects.filter(batch=batch).update(state=MergeOperation.PATCHED, finished_at=timezone.now())
        body = self.client.get("/progress/", headers={"HX-Request": "true"}).content.decode()
        assert '<span class="n" id="merges-today" hx-swap-oob="true">1</span>' in body

    def test_merges_today_counts_only_the_viewers_locations(self) -> None:
        make_operation(self.sydney_cluster, MergeOperation.PATCHED, finished_at=timezone.now())
        self.login(self.burleigh_manager)
        body = self.client.get("/progress/").content.decode()
        assert 'id="merges-today" hx-swap-oob="true">0<' in body
