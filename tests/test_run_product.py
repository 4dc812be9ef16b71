"""`make run` as a new user meets it: everything starts, answers, merges on Podium's published API, and stops
cleanly on Ctrl-C.

A taken port stops it before anything starts, with one line naming the port and how to pick another;
on the way out it says for each process whether it stopped by itself or had to be killed.
"""

from __future__ import annotations

import http.cookiejar
import io
import json
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dedup.management.commands.run_product import Command, _Child, _stale_reason
from podium_client.corpus import SYDNEY
from tests.processes import child_env

ROOT = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _get(url: str) -> tuple[int, str]:
    with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 - loopback only
        return response.status, response.read().decode()


def _env(tmp_path: Path, podium_port: int) -> dict[str, str]:
    return child_env(DEDUP_VAR_DIR=str(tmp_path), PODIUM_BASE_URL=f"http://127.0.0.1:{podium_port}")


# Picks, in the product's own database, an open auto cluster of Sydney the published API can merge as it
# is (no blocker, no loss), and prints what the test checks afterwards.
_PICK_CLUSTER = """
import json
from dedup.merge.planning import member_records, plan_for
from dedup.models import Cluster
for cluster in Cluster.objects.filter(status="open", kind="auto", location__uid=%r).order_by("pk"):
    plan = plan_for(cluster, member_records(cluster))
    if not plan.blockers and not plan.losses and plan.conversation_uids:
        print(json.dumps({"cluster": cluster.cluster_id, "primary": plan.primary_uid,
                          "duplicates": list(plan.duplicate_uids), "conversations": list(plan.conversation_uids),
                          "tags": [t.label for t in plan.tags]}))
        break
"""


class _Session:
    """A signed-in browser, as far as the dashboard can tell: cookies, the CSRF token, redirects followed."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.jar = http.cookiejar.CookieJar()
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(self.jar))

    def get(self, path: str) -> tuple[int, str, str]:
        with self.opener.open(self.base + path, timeout=30) as response:
            return response.status, response.geturl(), response.read().decode()

    def post(self, path: str, data: dict[str, str]) -> tuple[int, str, str]:
        token = next(c.value for c in self.jar if c.name == "csrftoken")
        body = urllib.parse.urlencode({**data, "csrfmiddlewaretoken": token}).encode()
        request = urllib.request.Request(self.base + path, data=body, headers={"Referer": self.base + path})
        with self.opener.open(request, timeout=60) as response:
            return response.status, response.geturl(), response.read().decode()

    def sign_in(self, username: str, password: str) -> None:
        self.get("/accounts/login/")
        status, url, _body = self.post("/accounts/login/", {"username": username, "password": password})
        assert status == 200 and url == self.base + "/", url


def _emulator(base: str, path: str) -> Any:
    with urllib.request.urlopen(base + path, timeout=10) as response:  # noqa: S310 - loopback only
        return json.loads(response.read())


def _wait(what: str, check: object, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"{what} did not happen:\n" + log.read_text()
        time.sleep(1)


def test_run_product_merges_end_to_end_on_the_published_api(tmp_path: Path) -> None:
    """Start, scan, review, approve, merged by the worker through the published API alone, stop cleanly."""
    web_port, podium_port = _free_port(), _free_port()
    env = _env(tmp_path, podium_port)
    log_path = tmp_path / "run.log"
    log = log_path.open("w+")
    proc = subprocess.Popen(
        [sys.executable, "manage.py", "run_product", "--port", str(web_port), "--people", "300"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    web, podium = f"http://127.0.0.1:{web_port}", f"http://127.0.0.1:{podium_port}"

    def shell(code: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "manage.py", "shell", "-c", code], cwd=ROOT, env=env, capture_output=True, text=True
        )

    try:
        def started() -> bool:
            assert proc.poll() is None, log_path.read_text()
            try:
                return _get(f"{web}/healthz")[0] == 200 and "Press Ctrl-C" in log_path.read_text()
            except OSError:
                return False

        _wait("start", started, log_path, 120)
        output = log_path.read_text()
        for username in ("sydney_manager", "burleigh_manager", "auditor", "admin"):
            assert f"log in as {username}" in output
        assert "capabilities: none (published API only)" in output
        status, body = _get(f"{web}/accounts/login/")
        assert status == 200 and "password" in body.lower()
        # The worker picks up the first scan: the index fills without anyone doing anything.
        check = "from dedup.models import ScanRun as S; import sys; sys.exit(0 if S.objects.filter(state='succeeded').exists() else 3)"
        _wait("the first scan", lambda: shell(check).returncode == 0, log_path, 120)

        picked = shell(_PICK_CLUSTER % SYDNEY)
        assert picked.returncode == 0 and picked.stdout.strip(), picked.stderr
        chosen = json.loads(picked.stdout.strip().splitlines()[-1])

        # The manager of Sydney reviews it in the dashboard and approves it.
        manager = _Session(web)
        manager.sign_in("sydney_manager", "demo-password-1")
        status, _url, queue = manager.get("/clusters/?kind=auto")
        assert status == 200 and chosen["cluster"] in queue
        status, _url, page = manager.get(f"/clusters/{chosen['cluster']}/")
        assert status == 200 and "Approve merge…" in page and "Consent per channel" in page
        assert "Through Podium&#x27;s published API" in page or "Through Podium's published API" in page
        status, url, merge_page = manager.post(f"/clusters/{chosen['cluster']}/approve/", {})
        assert status == 200 and "/history/" in url, url
        history = urllib.parse.urlsplit(url).path

        def merged() -> bool:
            return 'id="op-state">Patched<' in manager.get(history + "state/")[2]

        _wait("the merge", merged, log_path, 120)
        status, _url, merge_page = manager.get(history)
        assert "Consolidate (published API)" in merge_page
        assert merge_page.count("deleted in Podium by this merge (snapshot kept)") == len(chosen["duplicates"])

        # In Podium (the emulator): the duplicates are gone, their conversations and tags are on the survivor.
        deleted = {d["uid"] for d in _emulator(podium, "/_emulator/deleted")["data"]}
        assert set(chosen["duplicates"]) <= deleted
        survivor = _emulator(podium, f"/_emulator/contacts/{chosen['primary']}")["data"]
        assert set(chosen["conversations"]) <= {c["uid"] for c in survivor["conversations"]}
        assert set(chosen["tags"]) <= {t["label"] for t in survivor["tags"]}
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=40)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    output = log_path.read_text()
    assert proc.returncode == 0, output
    for child in ("web server", "background worker", "Podium emulator"):
        assert f"the {child} stopped\n" in output, output
    assert output.rstrip().endswith("stopped"), output
    # The emulator wrote its state on the way out, so the next `make run` continues from it.
    assert (tmp_path / "demo" / "emulator-state.ndjson").stat().st_size > 0
    with socket.socket() as sock:
        assert sock.connect_ex(("127.0.0.1", web_port)) != 0, "the web server is still running"


_OLD_LOCATION = '{"object": "location", "uid": "loc_sydney", "name": "Sydney CBD", "country": "AU"}'
_OLD_CONTACT = (
    '{"uid": "ct_1", "locationUid": "loc_sydney", "name": "Maria", "channels": [{"type": "PHONE", '
    '"identifier": "0412 345 678"}], "marketingOptOut": false, "smsOptOut": false, "emailOptOut": false, '
    '"tags": [], "attributes": [], "createdAt": "2025-01-01T00:00:00Z", "updatedAt": "2025-01-01T00:00:00Z"}'
)


def test_demo_files_of_an_earlier_run_in_the_pre_v4_shape_are_set_aside_and_regenerated(tmp_path: Path) -> None:
    demo = tmp_path / "demo"
    demo.mkdir()
    for name in ("corpus.ndjson", "emulator-state.ndjson"):
        (demo / name).write_text(f"{_OLD_LOCATION}\n{_OLD_CONTACT}\n")
    web_port, podium_port = _free_port(), _free_port()
    env = _env(tmp_path, podium_port)
    log_path = tmp_path / "run.log"
    proc = subprocess.Popen(
        [sys.executable, "manage.py", "run_product", "--port", str(web_port), "--people", "40"],
        cwd=ROOT, env=env, stdout=log_path.open("w+"), stderr=subprocess.STDOUT,
    )
    try:
        def started() -> bool:
            assert proc.poll() is None, log_path.read_text()
            return "Press Ctrl-C" in log_path.read_text()

        _wait("start", started, log_path, 120)
        output = log_path.read_text()
        assert "corpus.ndjson from an earlier run is in the pre-v4 export shape: set aside as corpus.ndjson.stale" in output
        assert "emulator-state.ndjson from an earlier run is in the pre-v4 export shape" in output
        assert (demo / "corpus.ndjson.stale").read_text().startswith(_OLD_LOCATION)
        assert _stale_reason(demo / "corpus.ndjson") is None  # a fresh v4 corpus of the demo organization
        status, _body = _get(f"http://127.0.0.1:{web_port}/healthz")
        assert status == 200
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=40)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    assert proc.returncode == 0, log_path.read_text()


def test_stale_demo_files_are_recognised(tmp_path: Path) -> None:
    from podium_client.corpus import write_corpus

    fresh = tmp_path / "fresh.ndjson"
    write_corpus(str(fresh), 5, 1)
    assert _stale_reason(fresh) is None
    old = tmp_path / "old.ndjson"
    old.write_text(f"{_OLD_LOCATION}\n{_OLD_CONTACT}\n")
    assert _stale_reason(old) == "in the pre-v4 export shape"
    empty = tmp_path / "empty.ndjson"
    empty.write_text("\n")
    assert _stale_reason(empty) == "empty"
    other = tmp_path / "other.ndjson"
    other.write_text("\n".join(line for line in fresh.read_text().splitlines() if SYDNEY not in line) + "\n")
    assert _stale_reason(other) == "of another organization (the demo locations are missing)"
    garbage = tmp_path / "garbage.ndjson"
    garbage.write_text("{not json\n")
    assert (_stale_reason(garbage) or "").startswith("unreadable")


@pytest.fixture
def listening() -> Iterator[int]:
    """A port something else already listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


def _run_product(tmp_path: Path, web_port: int, podium_port: int) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "manage.py", "run_product", "--port", str(web_port), "--people", "50"],
        cwd=ROOT, env=_env(tmp_path, podium_port), capture_output=True, text=True, timeout=60,
    )


def _nothing_started(tmp_path: Path, result: subprocess.CompletedProcess[str], podium_port: int | None) -> None:
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "Nothing was started." in output
    assert "log in as" not in output and "database migrated" not in output
    # No database (so no scan left running), no demo corpus, no emulator.
    assert not (tmp_path / "dedup.sqlite3").exists()
    assert not (tmp_path / "demo").exists()
    if podium_port is not None:
        with socket.socket() as sock:
            assert sock.connect_ex(("127.0.0.1", podium_port)) != 0


def test_a_taken_web_port_is_named_before_anything_starts(tmp_path: Path, listening: int) -> None:
    podium_port = _free_port()
    result = _run_product(tmp_path, listening, podium_port)
    _nothing_started(tmp_path, result, podium_port)
    lines = [line for line in result.stderr.splitlines() if f"port {listening}" in line]
    assert len(lines) == 1, result.stderr
    assert "already in use" in lines[0] and f"make run PORT={listening + 1}" in lines[0]


def test_a_taken_emulator_port_is_named_before_anything_starts(tmp_path: Path, listening: int) -> None:
    result = _run_product(tmp_path, _free_port(), listening)
    _nothing_started(tmp_path, result, None)
    assert f"port {listening} (the Podium emulator) is already in use" in result.stderr
    assert f"make run PODIUM_BASE_URL=http://127.0.0.1:{listening + 1}" in result.stderr


def _child(name: str, code: str) -> _Child:
    proc = subprocess.Popen([sys.executable, "-c", code], start_new_session=True)
    time.sleep(0.5)  # let it install its handlers
    return _Child(name, proc)


def test_stopping_says_which_process_had_to_be_killed() -> None:
    polite = _child("web server", "import time; time.sleep(60)")
    stubborn = _child("background worker", "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)")
    command = Command()
    out, err = io.StringIO(), io.StringIO()
    command.stdout._out, command.stderr._out = out, err  # type: ignore[attr-defined]
    started = time.monotonic()
    clean = command._stop([stubborn, polite], timeout=1.0)
    assert time.monotonic() - started < 5
    assert clean is False
    assert "the web server stopped\n" in out.getvalue()
    assert "the background worker did not stop within 1 s and was killed" in err.getvalue()
    assert out.getvalue().rstrip().endswith("stopped, not cleanly (see above)")
    assert stubborn.proc.returncode == -signal.SIGKILL


def test_stopping_everything_cleanly_says_stopped() -> None:
    children = [_child("Podium emulator", "import time; time.sleep(60)"), _child("web server", "import time; time.sleep(60)")]
    command = Command()
    out = io.StringIO()
    command.stdout._out = out  # type: ignore[attr-defined]
    assert command._stop(children, timeout=5.0) is True
    assert out.getvalue().splitlines() == ["the web server stopped", "the Podium emulator stopped", "stopped"]


@pytest.mark.django_db
def test_demo_users_get_the_demo_locations_and_keep_their_passwords() -> None:
    from django.contrib.auth.models import User

    from dedup.models import AuditEvent, Location, LocationGrant
    from podium_client.corpus import BURLEIGH
    from tests.dashboard_base import ensure_locations, make_user

    ensure_locations(SYDNEY, BURLEIGH)
    # An earlier run's user, granted a location the demo no longer has, with a password someone changed.
    old = Location.objects.create(uid="loc_sydney", name="Sydney CBD (pre-v4)")
    earlier = make_user("sydney_manager", "manager", [old])
    earlier.set_password("changed-by-its-owner-1")
    earlier.save()
    command = Command()
    command.stdout._out = io.StringIO()  # type: ignore[attr-defined]
    command._create_demo_users()

    def grants(username: str) -> set[str]:
        return set(LocationGrant.objects.filter(user__username=username).values_list("location__uid", flat=True))

    assert grants("sydney_manager") == {SYDNEY} and grants("burleigh_manager") == {BURLEIGH}
    assert grants("auditor") == set() and grants("admin") == set()
    assert User.objects.get(username="sydney_manager").check_password("changed-by-its-owner-1")
    assert User.objects.get(username="burleigh_manager").check_password("demo-password-1")
    event = AuditEvent.objects.get(event_type="user.updated")
    assert event.payload["before"] == ["loc_sydney"] and event.payload["locations"] == [SYDNEY]
    command._create_demo_users()  # a second start changes nothing
    assert AuditEvent.objects.filter(event_type="user.updated").count() == 1
