"""Sign-in: a person signs in and out; five failures in 15 minutes pause that username (429), as does an address."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.test import Client
from django.utils import timezone

from dedup import loginlimit
from dedup.models import LoginAttempt
from tests.dashboard_base import PASSWORD, DashboardTestCase


class LoginTestCase(DashboardTestCase):
    def post_login(self, username: str, password: str, address: str = "203.0.113.7", client: Client | None = None) -> Any:
        return (client or self.client).post(
            "/accounts/login/", {"username": username, "password": password}, REMOTE_ADDR=address
        )

    def test_the_sydney_manager_signs_in_and_out(self) -> None:
        response = self.post_login("sydney_manager", PASSWORD)
        assert response.status_code == 302 and response["Location"] == "/"
        assert self.client.get("/").status_code == 200
        response = self.client.post("/accounts/logout/")
        assert response.status_code == 302
        self.assert_login_redirect(self.client.get("/"), "/")

    def test_logout_is_post_only(self) -> None:
        self.login(self.sydney_manager)
        assert self.client.get("/accounts/logout/").status_code == 405

    def test_a_wrong_password_shows_the_form_again(self) -> None:
        response = self.post_login("sydney_manager", "nope")
        assert response.status_code == 200
        assert "Please enter a correct username and password" in response.content.decode()
        assert LoginAttempt.objects.filter(username="sydney_manager").count() == 1

    def test_five_failures_pause_that_username_even_with_the_right_password(self) -> None:
        for _ in range(loginlimit.MAX_FAILURES_PER_USERNAME):
            assert self.post_login("sydney_manager", "wrong").status_code == 200
        response = self.post_login("sydney_manager", PASSWORD)
        assert response.status_code == 429
        assert "Too many failed sign-in attempts" in response.content.decode()
        assert int(response["Retry-After"]) > 0
        assert "_auth_user_id" not in self.client.session
        # Other people are not locked out by someone guessing the Sydney manager's password.
        assert self.post_login("auditor", PASSWORD, client=Client()).status_code == 302

    def test_the_pause_ends_when_the_failures_leave_the_window(self) -> None:
        old = timezone.now() - loginlimit.WINDOW - timedelta(seconds=1)
        LoginAttempt.objects.bulk_create(
            LoginAttempt(username="sydney_manager", ip_address="203.0.113.7", attempted_at=old) for _ in range(10)
        )
        assert self.post_login("sydney_manager", PASSWORD).status_code == 302

    def test_many_usernames_from_one_address_pause_the_address(self) -> None:
        for i in range(loginlimit.MAX_FAILURES_PER_ADDRESS):
            self.post_login(f"guess{i}", "wrong", address="198.51.100.9")
        assert self.post_login("admin", PASSWORD, address="198.51.100.9").status_code == 429
        assert self.post_login("admin", PASSWORD, address="198.51.100.10").status_code == 302

    def test_a_success_clears_that_usernames_failures(self) -> None:
        for _ in range(3):
            self.post_login("admin", "wrong")
        assert self.post_login("admin", PASSWORD).status_code == 302
        assert not LoginAttempt.objects.filter(username="admin").exists()

    def test_login_without_csrf_is_refused(self) -> None:
        client = Client(enforce_csrf_checks=True)
        response = client.post("/accounts/login/", {"username": "admin", "password": PASSWORD})
        assert response.status_code == 403

    def test_next_is_followed_only_on_this_site(self) -> None:
        response = self.client.post(
            "/accounts/login/?next=https://evil.example/", {"username": "admin", "password": PASSWORD}
        )
        assert response["Location"] == "/"
        self.client.logout()
        response = self.client.post(
            "/accounts/login/", {"username": "admin", "password": PASSWORD, "next": "/audit/"}
        )
        assert response["Location"] == "/audit/"
