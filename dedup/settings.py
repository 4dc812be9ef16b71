"""Django settings, all deployment-specific values read from the environment.

Development (``DEBUG=1``, the ``make run`` default) needs nothing set. Production refuses to start
without ``SECRET_KEY`` and passes ``manage.py check --deploy`` with no warnings.
"""

from __future__ import annotations

import os
from pathlib import Path

from django.core.exceptions import ImproperlyConfigured

from dedup.envconfig import ConfigError, env_bool, env_list, parse_database_url

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(os.environ.get("DEDUP_VAR_DIR", BASE_DIR / "var"))
ENV = dict(os.environ)

try:
    DEBUG = env_bool(ENV, "DEBUG", False)
    ALLOWED_HOSTS = env_list(ENV, "ALLOWED_HOSTS", ["localhost", "127.0.0.1", "[::1]"] if DEBUG else [])
    if not ENV.get("DATABASE_URL"):
        # The embedded default: a SQLite file in the ignored var/ folder, created on first use.
        VAR_DIR.mkdir(parents=True, exist_ok=True)
    DATABASES = {
        "default": parse_database_url(
            ENV.get("DATABASE_URL") or f"sqlite:////{(VAR_DIR / 'dedup.sqlite3').resolve()}", BASE_DIR
        )
    }
except ConfigError as exc:
    raise ImproperlyConfigured(str(exc)) from exc

SECRET_KEY = ENV.get("SECRET_KEY", "")
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured(
            "SECRET_KEY is not set. Set it to a long random value in production, "
            "or set DEBUG=1 for local development."
        )
    SECRET_KEY = "dev-only-insecure-key-do-not-use-in-production-0123456789abcdef"

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    # Before django_q: its `qcluster` command takes precedence over django-q2's (dedup.workers).
    "dedup",
    "django_q",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "dedup.urls"
WSGI_APPLICATION = "dedup.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LOGIN_URL = "/accounts/login/"
LOGIN_REDIRECT_URL = "/"
LOGOUT_REDIRECT_URL = "/accounts/login/"

LANGUAGE_CODE = "en-au"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = VAR_DIR / "staticfiles"
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}
# Serve straight from the source folders in development and tests; production runs collectstatic.
WHITENOISE_USE_FINDERS = DEBUG or env_bool(ENV, "WHITENOISE_USE_FINDERS", False)
if WHITENOISE_USE_FINDERS:
    # WhiteNoise also scans STATIC_ROOT and warns when it is missing before the first collectstatic.
    STATIC_ROOT.mkdir(parents=True, exist_ok=True)

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Podium -----------------------------------------------------------------------------------
PODIUM_BASE_URL = ENV.get("PODIUM_BASE_URL", "http://127.0.0.1:8765" if DEBUG else "https://api.podium.com")
PODIUM_ACCESS_TOKEN = ENV.get("PODIUM_ACCESS_TOKEN", "dev-token" if DEBUG else "")
PODIUM_OAUTH_URL = ENV.get("PODIUM_OAUTH_URL", "")
PODIUM_CLIENT_ID = ENV.get("PODIUM_CLIENT_ID", "")
PODIUM_CLIENT_SECRET = ENV.get("PODIUM_CLIENT_SECRET", "")
PODIUM_REFRESH_TOKEN = ENV.get("PODIUM_REFRESH_TOKEN", "")
PODIUM_TIMEOUT = float(ENV.get("PODIUM_TIMEOUT", "10"))
PODIUM_DEFAULT_REGION = ENV.get("PODIUM_DEFAULT_REGION", "AU").upper()

# --- Background jobs (django-q2) ---------------------------------------------------------------
REDIS_URL = ENV.get("REDIS_URL", "")
Q_CLUSTER: dict[str, object] = {
    "name": "dedup",
    "workers": int(ENV.get("Q_WORKERS", "2")),
    "timeout": 3600,
    "retry": 3660,
    "max_attempts": 1,
    "ack_failures": True,
    "catch_up": False,
    "poll": 0.5,
    "label": "Background jobs",
}
# Seconds a busy worker's task gets to finish after SIGTERM/Ctrl-C before it is interrupted (dedup.workers).
Q_STOP_GRACE = float(ENV.get("Q_STOP_GRACE", "5"))
if REDIS_URL:
    Q_CLUSTER["redis"] = REDIS_URL
else:
    Q_CLUSTER["orm"] = "default"

# --- Security (production values pass `check --deploy`) -----------------------------------------
SESSION_COOKIE_HTTPONLY = True
X_FRAME_OPTIONS = "DENY"
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
if not DEBUG:
    SECURE_SSL_REDIRECT = env_bool(ENV, "SECURE_SSL_REDIRECT", True)
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    SECURE_HSTS_SECONDS = int(ENV.get("SECURE_HSTS_SECONDS", "31536000"))
    SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    SECURE_HSTS_PRELOAD = True
CSRF_TRUSTED_ORIGINS = env_list(ENV, "CSRF_TRUSTED_ORIGINS", [])

# --- Logging: PII is masked by the code that logs; keep the format plain ----------------------
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": ENV.get("LOG_LEVEL", "INFO")},
    "loggers": {
        "django.db.backends": {"level": "WARNING"},
        "django-q": {"level": "WARNING"},
    },
}
