"""``manage.py scan``: inline with progress, and clear errors that exit 1."""

from __future__ import annotations

import io
from datetime import timedelta
from typing import Any

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from dedup.management.commands.scan import progress_text
from dedup.models import Contact, ScanRun

pytestmark = pytest.mark.django_db


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def export(tmp_path: Any, lines: list[str]) -> str:
    path = tmp_path / "export.ndjson"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return str(path)


def test_scan_from_a_file_prints_plain_progress_and_a_summary(
    demo_corpus: tuple[list[str], dict[str, str]], tmp_path: Any
) -> None:
    out = io.StringIO()
    call_command("scan", from_file=export(tmp_path, demo_corpus[0]), stdout=out)
    text = out.getvalue()
    assert "\r" not in text  # not a terminal: plain lines only
    run = ScanRun.objects.get()
    assert run.state == ScanRun.SUCCEEDED and Contact.objects.count() == len(demo_corpus[1])
    assert f"scan #{run.pk} succeeded (file, all locations)" in text
    assert f"{run.clusters_found:,} open clusters" in text and "duplicate rate" in text


def test_on_a_terminal_the_progress_is_a_live_bar(
    demo_corpus: tuple[list[str], dict[str, str]], tmp_path: Any
) -> None:
    out = _Terminal()
    call_command("scan", from_file=export(tmp_path, demo_corpus[0]), stdout=out)
    run = ScanRun.objects.get()
    assert f"\rscan #{run.pk} · [" in out.getvalue() and "] 100% · " in out.getvalue()


def test_progress_text_shows_rate_and_eta() -> None:
    now = timezone.now()
    run = ScanRun(
        pk=7, state=ScanRun.RUNNING, contacts_seen=500, contacts_total=1000, pages=5, invalid_phones=3,
        started_at=now - timedelta(seconds=10),
    )  # fmt: skip
    text = progress_text(run, bar=True)
    assert text.startswith("scan #7 · [##############--------------]  50%")
    assert "500/1,000 contacts" in text and "50/s" in text and "ETA 0:10" in text and "3 invalid phones" in text


def test_a_missing_file_exits_with_the_reason(tmp_path: Any) -> None:
    with pytest.raises(CommandError, match="does not exist"):
        call_command("scan", from_file=str(tmp_path / "nope.ndjson"))


def test_a_file_with_a_bad_line_completes_with_it_rejected_and_exits_2(
    demo_corpus: tuple[list[str], dict[str, str]], tmp_path: Any
) -> None:
    lines = list(demo_corpus[0])
    lines.insert(10, "not json")
    out = io.StringIO()
    with pytest.raises(CommandError) as caught:
        call_command("scan", from_file=export(tmp_path, lines), stdout=out)
    run = ScanRun.objects.get()
    assert caught.value.returncode == 2  # not 0: something was not indexed; not 1: the scan finished
    assert f"scan #{run.pk} completed with 1 rejected (file, all locations)" in out.getvalue()
    message = str(caught.value)
    assert f"scan #{run.pk} completed with 1 rejected record(s)" in message
    assert f"/scans/rejected/?scan={run.pk}" in message
    # The rest is indexed; the bad line is kept for an admin with its number and text.
    assert Contact.objects.count() == len(demo_corpus[1])
    assert list(run.rejected.values_list("line_number", "raw")) == [(11, "not json")]


@pytest.mark.parametrize(
    "content", [b"", b"\n\n  \n", b"\xef\xbb\xbf", b"\xef\xbb\xbf\n\n"], ids=["empty", "blank", "bom", "bom-blank"]
)
def test_an_empty_file_is_not_reported_as_success(tmp_path: Any, content: bytes) -> None:
    path = tmp_path / "empty.ndjson"
    path.write_bytes(content)
    out = io.StringIO()
    with pytest.raises(CommandError, match=r"ERR_DEDUP_003 .*holds no contacts") as caught:
        call_command("scan", from_file=str(path), stdout=out)
    assert caught.value.returncode == 1 and "succeeded" not in out.getvalue()
    assert ScanRun.objects.get().state == ScanRun.FAILED


def test_an_old_shape_file_exits_saying_what_is_expected(tmp_path: Any) -> None:
    old = '{"uid":"ct_1","locationUid":"loc_sydney","name":"A","channels":[],"marketingOptOut":false}'
    with pytest.raises(CommandError, match=r"ERR_DEDUP_003 .*line 1: a contact line in the pre-v4 shape .*expected Podium's v4 export"):
        call_command("scan", from_file=export(tmp_path, [old]), stdout=io.StringIO())


def test_a_concurrent_scan_exits_with_err_014_naming_the_holder(db: None) -> None:
    holder = ScanRun.objects.create(scope_key="all", state=ScanRun.RUNNING, holder="system:schedule",
                                    started_at=timezone.now(), heartbeat_at=timezone.now())
    with pytest.raises(CommandError, match=rf"ERR_DEDUP_014 concurrent_run: scan #{holder.pk} \(started by system:schedule"):
        call_command("scan", "--full")


def test_an_unreachable_podium_exits_with_what_to_do(settings: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from dedup import scanning
    from dedup.models import Policy
    from dedup.podium import get_client

    settings.PODIUM_BASE_URL = "http://127.0.0.1:9"  # the discard port: nothing listens
    settings.PODIUM_TIMEOUT = 0.5
    policy = Policy.current()
    policy.rate_limit_per_minute = 0
    policy.save()
    monkeypatch.setattr(scanning, "get_client", lambda **kw: get_client(max_retries=0))
    with pytest.raises(CommandError, match="unreachable.*PODIUM_BASE_URL") as caught:
        call_command("scan", stdout=io.StringIO())
    assert str(caught.value).startswith("ERR_DEDUP_003 index_build_failed")
    assert ScanRun.objects.get().state == ScanRun.FAILED
