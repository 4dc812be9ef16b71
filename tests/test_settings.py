"""Settings come from the environment; production refuses unsafe values and passes check --deploy."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from dedup.envconfig import ConfigError, env_bool, env_list, parse_database_url

ROOT = Path(__file__).resolve().parent.parent
PROD_ENV = {
    "SECRET_KEY": "x" * 20 + "-prod-secret-key-with-enough-entropy-0123456789",
    "DEBUG": "0",
    "ALLOWED_HOSTS": "dedup.example.com",
    "DATABASE_URL": "postgres://dedup:pw@db.internal:5432/dedup",
    "AUDIT_HMAC_KEY": "a" * 16 + "-prod-audit-hmac-key-with-enough-entropy-0123456789",
}

CONFIG_VARIABLES = {"DEBUG", "SECRET_KEY", "DATABASE_URL", "REDIS_URL", "AUDIT_HMAC_KEY"}


def run_manage(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k not in CONFIG_VARIABLES}
    base["DJANGO_SETTINGS_MODULE"] = "dedup.settings"
    return subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, env={**base, **env}, capture_output=True, text=True, timeout=120
    )


def test_production_refuses_to_start_without_a_secret_key() -> None:
    env = {k: v for k, v in PROD_ENV.items() if k != "SECRET_KEY"}
    result = run_manage("check", env=env)
    assert result.returncode != 0
    assert "SECRET_KEY is not set" in result.stderr
    # One clear line, not a traceback through Django's settings loader.
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]


def test_the_wsgi_entry_point_refuses_without_a_secret_key_in_one_line() -> None:
    env = {k: v for k, v in PROD_ENV.items() if k != "SECRET_KEY"}
    base = {k: v for k, v in os.environ.items() if k not in CONFIG_VARIABLES}
    base["DJANGO_SETTINGS_MODULE"] = "dedup.settings"
    result = subprocess.run([sys.executable, "-c", "import dedup.wsgi"], cwd=ROOT, env={**base, **env},
                            capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert "SECRET_KEY is not set" in result.stderr


def test_production_refuses_to_start_without_a_usable_audit_key() -> None:
    for value, expected in (
        (None, "AUDIT_HMAC_KEY is not set"),
        ("short", "AUDIT_HMAC_KEY is too short"),
        (PROD_ENV["SECRET_KEY"], "AUDIT_HMAC_KEY must differ from SECRET_KEY"),
    ):
        env = {k: v for k, v in PROD_ENV.items() if k != "AUDIT_HMAC_KEY"}
        if value is not None:
            env["AUDIT_HMAC_KEY"] = value
        result = run_manage("check", env=env)
        assert result.returncode != 0, expected
        assert expected in result.stderr and "Traceback" not in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1


def test_both_missing_keys_are_named_on_one_line() -> None:
    env = {k: v for k, v in PROD_ENV.items() if k not in {"SECRET_KEY", "AUDIT_HMAC_KEY"}}
    result = run_manage("check", env=env)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "SECRET_KEY is not set" in lines[0] and "AUDIT_HMAC_KEY is not set" in lines[0]


def test_check_deploy_passes_with_production_values() -> None:
    result = run_manage("check", "--deploy", "--fail-level", "WARNING", env=PROD_ENV)
    assert result.returncode == 0, result.stderr + result.stdout
    assert "no issues" in result.stdout


def test_debug_gets_a_development_key_and_sqlite_by_default(tmp_path: Path) -> None:
    result = run_manage(
        "shell", "-c", "from django.conf import settings as s; print(s.DATABASES['default']['ENGINE'], bool(s.SECRET_KEY))",
        env={"DEBUG": "1", "DEDUP_VAR_DIR": str(tmp_path)},
    )
    assert result.returncode == 0, result.stderr
    assert "sqlite3 True" in result.stdout


def test_redis_url_switches_the_job_broker() -> None:
    code = "from django.conf import settings as s; print(sorted(k for k in ('orm', 'redis') if k in s.Q_CLUSTER))"
    with_redis = run_manage("shell", "-c", code, env={"DEBUG": "1", "REDIS_URL": "redis://127.0.0.1:6379/0"})
    without = run_manage("shell", "-c", code, env={"DEBUG": "1"})
    assert "['redis']" in with_redis.stdout, with_redis.stderr
    assert "['orm']" in without.stdout, without.stderr


def test_a_bad_database_url_is_a_clear_error() -> None:
    result = run_manage("check", env={"DEBUG": "1", "DATABASE_URL": "mysql://x/y"})
    assert result.returncode != 0
    assert "DATABASE_URL scheme 'mysql' is not supported" in result.stderr
    assert "Traceback" not in result.stderr


def test_parse_postgres_url() -> None:
    entry = parse_database_url("postgres://u%40x:p%2Fw@db:6543/name?sslmode=require", ROOT)
    assert entry["ENGINE"] == "django.db.backends.postgresql"
    assert (entry["USER"], entry["PASSWORD"], entry["HOST"], entry["PORT"], entry["NAME"]) == (
        "u@x", "p/w", "db", "6543", "name"
    )
    assert entry["OPTIONS"] == {"sslmode": "require"}


def test_parse_sqlite_urls() -> None:
    assert parse_database_url("sqlite:////abs/x.db", ROOT)["NAME"] == "/abs/x.db"
    assert parse_database_url("sqlite:///rel/x.db", ROOT)["NAME"] == str(ROOT / "rel/x.db")
    assert parse_database_url("sqlite://", ROOT)["NAME"] == ":memory:"


def test_postgres_url_needs_a_database_name() -> None:
    with pytest.raises(ConfigError, match="must name a database"):
        parse_database_url("postgres://host/", ROOT)


def test_env_bool_refuses_ambiguous_words() -> None:
    assert env_bool({"X": "Yes"}, "X", False) is True
    assert env_bool({}, "X", True) is True
    with pytest.raises(ConfigError, match="X must be one of"):
        env_bool({"X": "maybe"}, "X", False)


def test_env_list_splits_and_trims() -> None:
    assert env_list({"H": " a.com, ,b.com "}, "H", []) == ["a.com", "b.com"]


def test_a_malformed_database_url_is_a_clear_error_that_hides_the_password() -> None:
    with pytest.raises(ConfigError, match="not a valid URL") as raised:
        parse_database_url("postgres://dedup:s3cret@db:notaport/dedup", ROOT)
    assert "s3cret" not in str(raised.value)


def test_postgres_url_forms_and_connection_age() -> None:
    for scheme in ("postgres", "postgresql", "pgsql"):
        entry = parse_database_url(f"{scheme}://db/name", ROOT)
        assert entry["ENGINE"] == "django.db.backends.postgresql" and entry["NAME"] == "name"
        assert entry["CONN_MAX_AGE"] == 60 and entry["CONN_HEALTH_CHECKS"] is True
        assert "OPTIONS" not in entry
    tuned = parse_database_url("postgres://db/name?conn_max_age=0&connect_timeout=5", ROOT)
    assert tuned["CONN_MAX_AGE"] == 0 and tuned["OPTIONS"] == {"connect_timeout": 5}
    with pytest.raises(ConfigError, match="conn_max_age"):
        parse_database_url("postgres://db/name?conn_max_age=soon", ROOT)


def test_sqlite_waits_for_the_write_lock() -> None:
    entry = parse_database_url("sqlite:////abs/x.db", ROOT)
    assert entry["OPTIONS"] == {"timeout": 30, "transaction_mode": "IMMEDIATE"}
    assert parse_database_url("sqlite:///:memory:", ROOT)["NAME"] == ":memory:"
