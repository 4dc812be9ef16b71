"""Sign-in: a person signs in and out; five failures lock that username in any spelling of it (429), as do
twenty from one address. The lockout is django-axes with the product's key and limits (``dedup.lockout``)."""

from __future__ import annotations

import io
import unicodedata
from datetime import datetime, timedelta
from typing import Any

from axes.models import AccessAttempt
from django.conf import settings
from django.contrib.auth.models import User
from django.test import Client
from django.utils import timezone
from hypothesis import given
from hypothesis import settings as settings_hypothesis
from hypothesis import strategies as st

from dedup.lockout import lockout_key
from tests.dashboard_base import PASSWORD, DashboardTestCase

USERNAME_LIMIT = settings.AXES_FAILURE_LIMIT
ADDRESS_LIMIT = settings.LOGIN_ADDRESS_FAILURE_LIMIT
# Spellings Django's sign-in form reads as ``sydney_manager`` (NFKC, stripped), or that differ only in case.
LOOKALIKES = [
    "ｓｙｄｎｅｙ＿ｍａｎａｇｅｒ",  # fullwidth forms, fullwidth low line
    "SYDNEY_MANAGER",
    "Sydney_Manager",
    " sydney_manager\u3000",  # surrounding blanks, an ideographic space
    "\U0001d42c\U0001d432\U0001d41d\U0001d427\U0001d41e\U0001d432_manager",  # mathematical bold letters
]


def add_failures(username: str, count: int, at: datetime) -> None:
    """Failures recorded earlier (``attempt_time`` is set on insert, so it is moved back afterwards)."""
    attempt = AccessAttempt.objects.create(
        username=username, ip_address="203.0.113.7", user_agent="<unknown>", get_data="", post_data="",
        http_accept="", path_info="/accounts/login/", failures_since_start=count,
    )
    AccessAttempt.objects.filter(pk=attempt.pk).update(attempt_time=at)


def failures_for(key: str) -> int:
    return sum(AccessAttempt.objects.filter(username=key).values_list("failures_since_start", flat=True))


class LoginTestCase(DashboardTestCase):
    def post_login(self, username: str, password: str, address: str = "203.0.113.7", client: Client | None = None,
                   path: str = "/accounts/login/") -> Any:
        return (client or self.client).post(path, {"username": username, "password": password}, REMOTE_ADDR=address)

    def fail_until_locked(self, spellings: list[str]) -> None:
        """USERNAME_LIMIT failures, spread over the spellings; all but the last show the form again."""
        for i in range(USERNAME_LIMIT):
            response = self.post_login(spellings[i % len(spellings)], "wrong")
            assert response.status_code == (429 if i == USERNAME_LIMIT - 1 else 200), (i, response.status_code)

    def assert_locked(self, response: Any) -> None:
        assert response.status_code == 429
        assert "Too many failed sign-in attempts" in response.content.decode()
        assert 0 < int(response["Retry-After"]) <= 15 * 60

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
        assert failures_for("sydney_manager") == 1

    def test_five_failures_pause_that_username_even_with_the_right_password(self) -> None:
        self.fail_until_locked(["sydney_manager"])
        response = self.post_login("sydney_manager", PASSWORD)
        self.assert_locked(response)
        assert "_auth_user_id" not in self.client.session
        # Refused attempts during the lockout do not extend it.
        assert failures_for("sydney_manager") == USERNAME_LIMIT
        # Other people are not locked out by someone guessing the Sydney manager's password.
        assert self.post_login("auditor", PASSWORD, address="203.0.113.8", client=Client()).status_code == 302

    def test_a_lookalike_spelling_signs_in_as_the_same_person(self) -> None:
        # Why the lockout must key on the normalized name: Django's form reads the fullwidth form as the user.
        response = self.post_login("ｓｙｄｎｅｙ＿ｍａｎａｇｅｒ", PASSWORD)
        assert response.status_code == 302
        assert self.client.session["_auth_user_id"] == str(self.sydney_manager.pk)

    def test_a_lookalike_spelling_is_locked_with_the_username(self) -> None:
        self.fail_until_locked(["sydney_manager"])
        for spelling in LOOKALIKES:
            self.assert_locked(self.post_login(spelling, PASSWORD, client=Client()))

    def test_lookalike_spellings_share_one_counter(self) -> None:
        self.fail_until_locked(LOOKALIKES)
        assert failures_for("sydney_manager") == USERNAME_LIMIT
        self.assert_locked(self.post_login("sydney_manager", PASSWORD, client=Client()))

    def test_combining_forms_and_ligatures_are_one_username(self) -> None:
        User.objects.create_user(username="josé", password=PASSWORD)  # é precomposed (U+00E9)
        User.objects.create_user(username="fiona", password=PASSWORD)
        self.fail_until_locked(["jose\u0301", "JOSE\u0301", "JOSÉ"])  # e + combining acute accent
        self.assert_locked(self.post_login("josé", PASSWORD, client=Client()))
        self.fail_until_locked(["\ufb01ona", "ＦＩＯＮＡ"])  # the "fi" ligature
        self.assert_locked(self.post_login("fiona", PASSWORD, client=Client()))

    def test_the_admin_sign_in_shares_the_lockout(self) -> None:
        self.fail_until_locked(["admin"])
        response = self.post_login("ＡＤＭＩＮ", PASSWORD, path="/admin/login/?next=/admin/")
        self.assert_locked(response)
        assert "_auth_user_id" not in self.client.session

    def test_the_pause_ends_when_the_failures_leave_the_window(self) -> None:
        add_failures("sydney_manager", 10, timezone.now() - settings.AXES_COOLOFF_TIME - timedelta(seconds=1))
        assert self.post_login("sydney_manager", PASSWORD).status_code == 302

    def test_the_retry_after_counts_down_from_the_failure_that_locked(self) -> None:
        add_failures("sydney_manager", USERNAME_LIMIT, timezone.now() - timedelta(minutes=10))
        response = self.post_login("sydney_manager", PASSWORD)
        self.assert_locked(response)
        assert 4 * 60 <= int(response["Retry-After"]) <= 5 * 60 + 1
        assert "about 5 minutes" in response.content.decode()

    def test_many_usernames_from_one_address_pause_the_address(self) -> None:
        for i in range(ADDRESS_LIMIT - 1):
            assert self.post_login(f"guess{i}", "wrong", address="198.51.100.9").status_code == 200
        # An office's own sign-in still works below the address limit, and does not clear the address's count.
        assert self.post_login("admin", PASSWORD, address="198.51.100.9", client=Client()).status_code == 302
        self.assert_locked(self.post_login(f"guess{ADDRESS_LIMIT}", "wrong", address="198.51.100.9"))
        self.assert_locked(self.post_login("auditor", PASSWORD, address="198.51.100.9", client=Client()))
        assert self.post_login("auditor", PASSWORD, address="198.51.100.10", client=Client()).status_code == 302

    def test_a_success_clears_that_usernames_failures(self) -> None:
        for _ in range(3):
            self.post_login("admin", "wrong")
        assert self.post_login("admin", PASSWORD).status_code == 302
        assert not AccessAttempt.objects.filter(username="admin").exists()

    def test_a_forwarded_header_does_not_change_the_address(self) -> None:
        for i in range(ADDRESS_LIMIT):
            self.client.post("/accounts/login/", {"username": f"guess{i}", "password": "wrong"},
                             REMOTE_ADDR="198.51.100.9", HTTP_X_FORWARDED_FOR=f"10.0.0.{i}")
        self.assert_locked(self.post_login("admin", PASSWORD, address="198.51.100.9", client=Client()))

    def test_an_admin_lifts_a_lockout_by_the_name_as_spelled(self) -> None:
        from django.core.management import call_command

        self.fail_until_locked(["sydney_manager"])
        call_command("axes_reset_username", "Sydney_Manager", stdout=io.StringIO())
        assert self.post_login("sydney_manager", PASSWORD).status_code == 302

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


@settings_hypothesis(max_examples=500)
@given(st.text(max_size=40))
def test_the_lockout_key_is_stable_under_the_sign_in_forms_normalization(raw: str) -> None:
    key = lockout_key(raw)
    assert key is not None
    # What the sign-in form passes to authenticate() (stripped, then NFKC) has the key of what was typed ...
    assert lockout_key(unicodedata.normalize("NFKC", raw.strip())) == key
    # ... case does not change it, and the key is its own key.
    assert lockout_key(raw.upper().casefold()) == lockout_key(raw.upper())
    assert lockout_key(key) == key


def test_the_key_matches_what_the_form_signs_in_with() -> None:
    from django.contrib.auth.forms import UsernameField

    for spelling in LOOKALIKES:
        assert lockout_key(UsernameField().to_python(spelling)) == "sydney_manager", spelling
    assert lockout_key("jose\u0301") == lockout_key("JOSÉ") == "josé"
    assert lockout_key("\ufb01ona") == "fiona"
