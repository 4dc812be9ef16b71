"""Reading deployment configuration from the environment.

Kept apart from ``settings`` so the parsing rules are unit-testable without reloading Django.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

TRUE_WORDS = {"1", "true", "yes", "on"}
FALSE_WORDS = {"0", "false", "no", "off", ""}
SQLITE_SCHEMES = frozenset({"sqlite"})
POSTGRES_SCHEMES = frozenset({"postgres", "postgresql", "pgsql"})


class ConfigError(ValueError):
    """A configuration value from the environment is unusable; the message names the variable."""


class SettingsError(ImproperlyConfigured):
    """The deployment cannot start with this environment.

    ``manage.py`` and the WSGI entry point print its message as one line and exit non-zero: the
    message says what to set, and a traceback through Django's settings loader would only bury it.
    """


def env_bool(environ: dict[str, str], name: str, default: bool) -> bool:
    """Parse a yes/no environment variable, refusing anything ambiguous."""
    raw = environ.get(name)
    if raw is None:
        return default
    word = raw.strip().lower()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    raise ConfigError(f"{name} must be one of 1/0, true/false, yes/no, on/off; got {raw!r}")


def env_list(environ: dict[str, str], name: str, default: list[str]) -> list[str]:
    """Parse a comma-separated list, dropping blanks."""
    raw = environ.get(name)
    if raw is None:
        return list(default)
    return [item.strip() for item in raw.split(",") if item.strip()]


def parse_database_url(url: str, base_dir: Path) -> dict[str, Any]:
    """Turn ``sqlite:///path`` or ``postgres://user:pw@host:port/name?opt=v`` into a DATABASES entry.

    dj-database-url reads the URL; this adds what the product needs on top: only SQLite and PostgreSQL
    are accepted, relative SQLite paths are resolved against ``base_dir`` (so ``make run`` and the tests
    agree on where the file lives whatever the working directory), SQLite waits for the write lock, and
    PostgreSQL keeps its connections (``?conn_max_age=N`` overrides the 60 seconds).
    """
    scheme = urlsplit(url).scheme.lower()
    if scheme not in SQLITE_SCHEMES | POSTGRES_SCHEMES:
        raise ConfigError(
            f"DATABASE_URL scheme {scheme!r} is not supported; use sqlite:///path or postgres://user@host/name"
        )
    try:
        entry: dict[str, Any] = dict(dj_database_url.parse(url))
    except ValueError:
        # The library's message is generic on purpose; never echo the URL, it may hold a password.
        raise ConfigError(
            "DATABASE_URL is not a valid URL (check the port, and percent-encode special characters in the "
            "user name and password)"
        ) from None
    options: dict[str, Any] = dict(entry.pop("OPTIONS", {}))
    if scheme in SQLITE_SCHEMES:
        name = str(entry["NAME"])
        if name != ":memory:":
            path = Path(name)
            name = str(path if path.is_absolute() else base_dir / path)
        return {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": name,
            # Background workers and the web server share the file; wait for the lock instead of
            # failing at once with "database is locked".
            "OPTIONS": {"timeout": 30, "transaction_mode": "IMMEDIATE", **options},
        }
    if not entry.get("NAME"):
        raise ConfigError("DATABASE_URL for PostgreSQL must name a database: postgres://host/NAME")
    conn_max_age = options.pop("conn_max_age", 60)
    if not isinstance(conn_max_age, int):
        raise ConfigError(f"DATABASE_URL option conn_max_age must be a whole number of seconds; got {conn_max_age!r}")
    entry.update(
        {
            "PORT": str(entry.get("PORT") or ""),
            "CONN_MAX_AGE": conn_max_age,
            "CONN_HEALTH_CHECKS": True,
        }
    )
    entry.pop("DISABLE_SERVER_SIDE_CURSORS", None)
    if options:
        entry["OPTIONS"] = options
    return entry
