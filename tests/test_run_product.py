"""`make run` as a new user meets it: everything starts, answers, and stops cleanly on Ctrl-C."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _get(url: str) -> tuple[int, str]:
    with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 - loopback only
        return response.status, response.read().decode()


def test_run_product_starts_everything_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    web_port, podium_port = _free_port(), _free_port()
    env = {
        k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "REDIS_URL", "DJANGO_SETTINGS_MODULE"}
    }
    env.update(
        DEBUG="1",
        DEDUP_VAR_DIR=str(tmp_path),
        PODIUM_BASE_URL=f"http://127.0.0.1:{podium_port}",
        PYTHONUNBUFFERED="1",
    )
    log = (tmp_path / "run.log").open("w+")
    proc = subprocess.Popen(
        [sys.executable, "manage.py", "run_product", "--port", str(web_port), "--people", "300"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, (tmp_path / "run.log").read_text()
            try:
                status, body = _get(f"http://127.0.0.1:{web_port}/healthz")
                if status == 200 and "Press Ctrl-C" in (tmp_path / "run.log").read_text():
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, (tmp_path / "run.log").read_text()
            time.sleep(0.5)
        output = (tmp_path / "run.log").read_text()
        for username in ("manager", "auditor", "admin"):
            assert f"log in as {username}" in output
        status, body = _get(f"http://127.0.0.1:{web_port}/accounts/login/")
        assert status == 200 and "password" in body.lower()
        # The worker picks up the first scan: the index fills without anyone doing anything.
        check = (
            "from dedup.models import ScanRun as S; import sys; "
            "sys.exit(0 if S.objects.filter(state='succeeded').exists() else 3)"
        )
        deadline = time.monotonic() + 90
        while subprocess.run(
            [sys.executable, "manage.py", "shell", "-c", check], cwd=ROOT, env=env, capture_output=True
        ).returncode != 0:
            assert time.monotonic() < deadline, "the first scan did not finish:\n" + (tmp_path / "run.log").read_text()
            time.sleep(1)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=40)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    assert proc.returncode == 0, (tmp_path / "run.log").read_text()
    assert "stopped" in (tmp_path / "run.log").read_text()
    # The emulator wrote its state on the way out, so the next `make run` continues from it.
    assert (tmp_path / "demo" / "emulator-state.ndjson").stat().st_size > 0
    with socket.socket() as sock:
        assert sock.connect_ex(("127.0.0.1", web_port)) != 0, "the web server is still running"
