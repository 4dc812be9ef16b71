"""Reading deployment configuration from the environment.

Kept apart from ``settings`` so the parsing rules are unit-testable without reloading Django.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from django.core.exceptions import ImproperlyConfigured

TRUE_WORDS = {"1", "true", "yes", "on"}
FALSE_WORDS = {"0", "false", "no", "off", ""}


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

    Relative SQLite paths are resolved against ``base_dir`` so ``make run`` and the tests agree on
    where the file lives whatever the working directory.
    """
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme == "sqlite":
        raw_path = unquote(url[len("sqlite://") :])
        # sqlite:///relative/x.db -> "/relative/x.db"; sqlite:////abs/x.db -> "//abs/x.db"
        if raw_path.startswith("//"):
            path = Path(raw_path[1:])
        elif raw_path in ("", "/", "/:memory:"):
            return {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}
        else:
            path = base_dir / raw_path.lstrip("/")
        return {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": str(path),
            # Background workers and the web server share the file; wait for the lock instead of
            # failing at once with "database is locked".
            "OPTIONS": {"timeout": 30, "transaction_mode": "IMMEDIATE"},
        }
    if scheme in ("postgres", "postgresql", "pgsql"):
        name = unquote(parts.path.lstrip("/"))
        if not name:
            raise ConfigError("DATABASE_URL for PostgreSQL must name a database: postgres://host/NAME")
        options = {key: values[-1] for key, values in parse_qs(parts.query).items()}
        entry: dict[str, Any] = {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": name,
            "USER": unquote(parts.username or ""),
            "PASSWORD": unquote(parts.password or ""),
            "HOST": parts.hostname or "",
            "PORT": str(parts.port or ""),
            "CONN_MAX_AGE": int(options.pop("conn_max_age", "60")),
            "CONN_HEALTH_CHECKS": True,
        }
        if options:
            entry["OPTIONS"] = options
        return entry
    raise ConfigError(
        f"DATABASE_URL scheme {scheme!r} is not supported; use sqlite:///path or postgres://user@host/name"
    )
