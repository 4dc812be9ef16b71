"""Django settings, all deployment-specific values read from the environment.

Development (``DEBUG=1``, the ``make run`` default) needs nothing set. Production refuses to start
without ``SECRET_KEY`` and passes ``manage.py check --deploy`` with no warnings.
"""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

from dedup.envconfig import ConfigError, SettingsError, env_bool, env_list, parse_database_url

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
    raise SettingsError(str(exc)) from None

SECRET_KEY = ENV.get("SECRET_KEY", "")
# The audit chain's HMAC key (dedup.auditchain). Kept in the environment, never in the database, so
# someone who can write to the database cannot recompute the hashes of an edited or forged event.
AUDIT_HMAC_KEY = ENV.get("AUDIT_HMAC_KEY", "")
AUDIT_HMAC_KEY_MIN_LENGTH = 32
_missing: list[str] = []
if not DEBUG:
    if not SECRET_KEY:
        _missing.append(
            "SECRET_KEY is not set. Set it to a long random value in production, or set DEBUG=1 for local development."
        )
    if not AUDIT_HMAC_KEY:
        _missing.append(
            "AUDIT_HMAC_KEY is not set. Set it to a long random value kept outside the database (for example "
            "`python -c 'import secrets; print(secrets.token_hex(32))'`), the same for every process of the "
            "deployment, or set DEBUG=1 for local development."
        )
    elif len(AUDIT_HMAC_KEY) < AUDIT_HMAC_KEY_MIN_LENGTH:
        _missing.append(f"AUDIT_HMAC_KEY is too short: use at least {AUDIT_HMAC_KEY_MIN_LENGTH} random characters.")
    elif AUDIT_HMAC_KEY == SECRET_KEY:
        _missing.append("AUDIT_HMAC_KEY must differ from SECRET_KEY, so a leaked SECRET_KEY cannot forge the audit log.")
if _missing:
    raise SettingsError(" ".join(_missing))
SECRET_KEY = SECRET_KEY or "dev-only-insecure-key-do-not-use-in-production-0123456789abcdef"
AUDIT_HMAC_KEY = AUDIT_HMAC_KEY or "dev-only-audit-key-do-not-use-in-production-0123456789abcdef"

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
    "axes",
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
    # Podium calls made while a request is served go before bulk work in the shared budget (dedup.budget).
    "dedup.budget.InteractivePriority",
    # Last, as django-axes asks: it turns a locked-out sign-in into the 429 page.
    "axes.middleware.AxesMiddleware",
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
AUTHENTICATION_BACKENDS = [
    # First: refuses a locked-out username or address before any password is checked.
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]
LOGIN_URL = "/accounts/login/"

# --- Sign-in lockout (django-axes; the product's policy is in dedup.lockout) --------------------
AXES_FAILURE_LIMIT = 5  # failures for one username (any spelling of it) within the cool-off
LOGIN_ADDRESS_FAILURE_LIMIT = 20  # failures from one address: higher, an office shares one
AXES_COOLOFF_TIME = timedelta(minutes=15)
AXES_LOCKOUT_PARAMETERS = ["username", "ip_address"]
AXES_USERNAME_CALLABLE = "dedup.lockout.lockout_username"
AXES_CLIENT_IP_CALLABLE = "dedup.lockout.client_address"
AXES_HANDLER = "dedup.lockout.LoginLimitHandler"
AXES_LOCKOUT_CALLABLE = "dedup.views.accounts.locked_out"
AXES_RESET_ON_SUCCESS = True
# Refused attempts during a lockout are not counted, so the lockout ends on time for the real person.
AXES_RESET_COOL_OFF_ON_FAILURE_DURING_LOCKOUT = False
# Successful sign-ins are not logged to a table: only failures are kept, and only within the cool-off.
AXES_DISABLE_ACCESS_LOG = True
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
# The OAuth token endpoint (a full URL). Podium's own sample posts to accounts.podium.com; some
# integrations use api.podium.com/oauth/token. PODIUM_OAUTH_URL (a base URL) is the older spelling.
_LEGACY_OAUTH_BASE = ENV.get("PODIUM_OAUTH_URL", "").rstrip("/")
PODIUM_TOKEN_URL = ENV.get(
    "PODIUM_TOKEN_URL",
    (_LEGACY_OAUTH_BASE + "/oauth/token") if _LEGACY_OAUTH_BASE else "https://accounts.podium.com/oauth/token",
)
PODIUM_API_VERSION = ENV.get("PODIUM_API_VERSION", "2021.04.01")
# Scopes the product needs; the tenant probe checks the token has them.
PODIUM_SCOPES = [s for s in ENV.get("PODIUM_SCOPES", "read_contacts,write_contacts,read_locations").split(",") if s]
# Part 2 capabilities the tenant has beyond Podium's published API (merge, restore, soft-delete).
PODIUM_CAPABILITIES = [c.strip() for c in ENV.get("PODIUM_CAPABILITIES", "").split(",") if c.strip()]
_unknown_capabilities = set(PODIUM_CAPABILITIES) - {"merge", "restore", "soft-delete"}
if _unknown_capabilities:
    raise SettingsError(
        f"PODIUM_CAPABILITIES has {sorted(_unknown_capabilities)}; known: merge, restore, soft-delete"
    )
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
    # A worker may have processes of its own: a scan it runs prepares a big export and scores detection
    # in a pool of forked processes, as ``manage.py scan`` does. Daemonic workers (django-q2's default)
    # may not, and a 1M-contact scan queued from the dashboard took 3:07 in one process against 1:57
    # from the command line. A stopping cluster signals every process below it (``dedup.workers``); a
    # pool whose worker was killed ends by itself (its processes read end-of-file on their task pipe).
    "daemonize_workers": False,
}
# Seconds a busy worker's task gets to finish after SIGTERM/Ctrl-C before it is interrupted (dedup.workers).
Q_STOP_GRACE = float(ENV.get("Q_STOP_GRACE", "5"))
# Each worker process writes a heartbeat this often; one silent for WORKER_STALE_SECONDS counts as dead
# (the Scans page, /healthz?workers=1; dedup.heartbeat).
WORKER_HEARTBEAT_SECONDS = float(ENV.get("WORKER_HEARTBEAT_SECONDS", "5"))
WORKER_STALE_SECONDS = float(ENV.get("WORKER_STALE_SECONDS", "30"))
if REDIS_URL:
    Q_CLUSTER["redis"] = REDIS_URL
else:
    Q_CLUSTER["orm"] = "default"

# --- Cache (rate limits of the webhook receiver and the lookup API) -----------------------------
# With REDIS_URL the counters live in Redis and every process shares them; without it each process
# counts for itself (the embedded default: one web process), which still bounds a flood per process.
if REDIS_URL:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": REDIS_URL}}
else:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache", "LOCATION": "dedup"}}

# --- Real time: Podium webhooks, the lookup API -------------------------------------------------
# The webhook secret: from the environment when set (then nothing is stored), else the one
# `manage.py podium_webhook register` generated, stored encrypted with a key derived (HKDF-SHA256) from
# PODIUM_WEBHOOK_ENCRYPTION_KEY, or from SECRET_KEY when that is not set.
PODIUM_WEBHOOK_SECRET = ENV.get("PODIUM_WEBHOOK_SECRET", "")
PODIUM_WEBHOOK_ENCRYPTION_KEY = ENV.get("PODIUM_WEBHOOK_ENCRYPTION_KEY", "")
# How far podium-timestamp may be from our clock, either way (replays older than this are refused).
PODIUM_WEBHOOK_TOLERANCE_S = float(ENV.get("PODIUM_WEBHOOK_TOLERANCE_S", "300"))
PODIUM_WEBHOOK_MAX_BODY_BYTES = int(ENV.get("PODIUM_WEBHOOK_MAX_BODY_BYTES", str(256 * 1024)))
# Per client address; Podium sends one delivery at a time per webhook, so this only stops floods.
PODIUM_WEBHOOK_RATE_LIMIT = ENV.get("PODIUM_WEBHOOK_RATE_LIMIT", "500/s")
# Per API token.
API_LOOKUP_RATE_LIMIT = ENV.get("API_LOOKUP_RATE_LIMIT", "1200/m")

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
    "filters": {"client_errors_on_one_line": {"()": "dedup.logfilters.ClientErrorsOnOneLine"}},
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "formatter": "plain",
            "filters": ["client_errors_on_one_line"],
        }
    },
    "root": {"handlers": ["console"], "level": ENV.get("LOG_LEVEL", "INFO")},
    "loggers": {
        # Named so that Django's own DEBUG-only console handler is dropped: its records reach the root's
        # console once, through the one-line filter (otherwise a 403 printed a traceback in development).
        "django": {"level": "INFO"},
        "django.db.backends": {"level": "WARNING"},
        "django-q": {"level": "WARNING"},
        # Axes logs every sign-in at INFO; its failure and lockout lines (usernames masked) are WARNING.
        "axes": {"level": "WARNING"},
    },
}
