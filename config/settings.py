"""Settings for the Tidebase server: everything comes from the environment.

Every variable is documented in README.md ("Configuration").
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlparse

BASE_DIR = Path(__file__).resolve().parent.parent


def env_bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    return raw.strip().lower() not in {"0", "false", "no", "off"}


def env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    return int(raw) if raw not in (None, "") else default


def database_from_url(url: str) -> dict[str, Any]:
    """Translate ``postgres://user:pass@host:port/db?host=/socket/dir`` into Django settings."""
    parsed = urlparse(url)
    if parsed.scheme not in {"postgres", "postgresql", "postgresql+psycopg"}:
        raise ValueError(f"DATABASE_URL must be a postgres:// URL, got {parsed.scheme!r}")
    query = {k: v[-1] for k, v in parse_qs(parsed.query).items()}
    host = query.pop("host", None) or (unquote(parsed.hostname) if parsed.hostname else "")
    return {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": unquote(parsed.path.lstrip("/")) or "postgres",
        "USER": unquote(parsed.username or "") or "postgres",
        "PASSWORD": unquote(parsed.password or ""),
        "HOST": host,
        "PORT": str(parsed.port or ""),
        "CONN_MAX_AGE": env_int("TIDEBASE_CONN_MAX_AGE", 600),
        # Off by default: the check is an extra round trip at the start of every request. After a
        # database restart each pooled connection fails one request, then reconnects.
        "CONN_HEALTH_CHECKS": env_bool("TIDEBASE_CONN_HEALTH_CHECKS", False),
        "OPTIONS": {
            # Short statements and lock waits: a stuck request fails instead of piling up.
            # plan_cache_mode: the hot path's prepared statements keep one generic plan instead of
            # being re-planned per call (only prepared statements are affected).
            "options": (
                "-c statement_timeout={} -c lock_timeout={} -c idle_in_transaction_session_timeout=60000"
                " -c plan_cache_mode=force_generic_plan"
            ).format(
                env_int("TIDEBASE_STATEMENT_TIMEOUT_MS", 30000),
                env_int("TIDEBASE_LOCK_TIMEOUT_MS", 10000),
            ),
            # Django binds parameters client-side, so nothing is prepared implicitly; the hot
            # path asks for server-side prepared statements explicitly (tidebase_core.db).
            "prepare_threshold": 1_000_000,
            **query,
        },
        "TEST": {"NAME": os.environ.get("TIDEBASE_TEST_DATABASE_NAME") or None},
    }


DATABASE_URL = os.environ.get("DATABASE_URL", "")
if not DATABASE_URL:
    from config.embedded import embedded_database_url

    DATABASE_URL = embedded_database_url()
DATABASES = {"default": database_from_url(DATABASE_URL)}

DEBUG = env_bool("DJANGO_DEBUG", False)
SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY") or "insecure-dev-key-set-DJANGO_SECRET_KEY-in-production"
ALLOWED_HOSTS = [h.strip() for h in os.environ.get("DJANGO_ALLOWED_HOSTS", "*").split(",") if h.strip()]
CSRF_TRUSTED_ORIGINS = [o.strip() for o in os.environ.get("DJANGO_CSRF_TRUSTED_ORIGINS", "").split(",") if o.strip()]

PORT = env_int("PORT", 7373)

# --- Tidebase protocol settings (PROTOCOL.md §16) -----------------------------------------
TIDEBASE_API_KEY = os.environ.get("TIDEBASE_API_KEY") or None
TIDEBASE_LEASE_MS = env_int("TIDEBASE_LEASE_MS", 60000)
# A first step begin commits without waiting for the WAL flush unless this is on (see README).
TIDEBASE_STEP_BEGIN_SYNC_COMMIT = env_bool("TIDEBASE_STEP_BEGIN_SYNC_COMMIT", False)
TIDEBASE_WEBHOOK_SECRET = os.environ.get("TIDEBASE_WEBHOOK_SECRET") or None
TIDEBASE_PUBLIC_URL = (os.environ.get("TIDEBASE_PUBLIC_URL") or f"http://localhost:{PORT}").removesuffix("/")
TIDEBASE_CORS_ORIGIN = os.environ.get("TIDEBASE_CORS_ORIGIN") or "*"
TIDEBASE_RECONCILE_MS = env_int("TIDEBASE_RECONCILE_MS", 5000)
TIDEBASE_RECONCILER = env_bool("TIDEBASE_RECONCILER", True)
TIDEBASE_AUTO_MIGRATE = env_bool("TIDEBASE_AUTO_MIGRATE", True)
TIDEBASE_MAX_BODY_BYTES = env_int("TIDEBASE_MAX_BODY_BYTES", 64 * 1024 * 1024)
"""Largest accepted request body. Multi-megabyte checkpoints are normal; above this → 413."""
TIDEBASE_SSE_KEEPALIVE_S = float(os.environ.get("TIDEBASE_SSE_KEEPALIVE_S") or 15)
TIDEBASE_GATE_WAIT_MAX_MS = env_int("TIDEBASE_GATE_WAIT_MAX_MS", 30000)
TIDEBASE_API_KEY_CACHE_S = float(os.environ.get("TIDEBASE_API_KEY_CACHE_S") or 5)
"""How long a verified app API key is trusted before it is looked up again (revocation delay)."""

DATA_UPLOAD_MAX_MEMORY_SIZE = TIDEBASE_MAX_BODY_BYTES

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "tidebase_core",
    "webhooks",
    "dashboard",
    "django_htmx",
    "template_partials",
]

MIDDLEWARE = [
    # The API middleware answers protocol paths (auth, CORS, body limit) before the
    # session/CSRF stack, which the wire protocol must never see (PROTOCOL.md §19.9).
    "tidebase_core.middleware.ProtocolMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",  # serves static/ (vendored htmx, Chart.js) under gunicorn
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]
APPEND_SLASH = False

ROOT_URLCONF = "config.urls"
WSGI_APPLICATION = "config.wsgi.application"

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

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
STATICFILES_DIRS = [BASE_DIR / "static"] if (BASE_DIR / "static").is_dir() else []
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
LOGIN_URL = "/dashboard/login/"
LOGIN_REDIRECT_URL = "/dashboard/"
LOGOUT_REDIRECT_URL = "/dashboard/login/"
# Serve static files straight from the finders: no collectstatic step for `make run`.
WHITENOISE_USE_FINDERS = True

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": os.environ.get("TIDEBASE_LOG_LEVEL", "INFO")},
    # 4xx answers are part of the protocol (409 run_leased while a lease lapses, ...): not warnings.
    "loggers": {"django.request": {"level": "ERROR"}},
}

# --- webhooks / Celery (owned by the webhooks app; see README "Webhooks") ------------------
CELERY_BROKER_URL = os.environ.get("CELERY_BROKER_URL") or ""
"""Redis (``redis://``) or RabbitMQ (``amqp://``). Unset: the embedded broker, a folder under
``TIDEBASE_BROKER_DIR`` (one machine only; Postgres holds every delivery, so the broker holds
nothing that cannot be rebuilt by the sweep)."""
TIDEBASE_BROKER_DIR = os.environ.get("TIDEBASE_BROKER_DIR") or ""
"""Folder of the embedded broker; default ``$TIDEBASE_DATA_DIR/broker``."""
TIDEBASE_WEBHOOK_SECRET_PREVIOUS = [s for s in (os.environ.get("TIDEBASE_WEBHOOK_SECRET_PREVIOUS") or "").split() if s]
"""Secrets being rotated out: Standard Webhooks signatures are also sent for each of them."""
_RETRY_SCHEDULE_DEFAULT = "5,300,1800,7200,18000,36000,36000"
TIDEBASE_WEBHOOK_RETRY_SCHEDULE = [
    float(x)
    for x in (os.environ.get("TIDEBASE_WEBHOOK_RETRY_SCHEDULE") or _RETRY_SCHEDULE_DEFAULT).split(",")
    if x.strip()
]
"""Seconds to wait before each retry (Standard Webhooks: 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h),
±10 % jitter. A delivery makes ``len(schedule) + 1`` attempts, then it is dead-lettered."""
TIDEBASE_WEBHOOK_CONNECT_TIMEOUT_S = float(os.environ.get("TIDEBASE_WEBHOOK_CONNECT_TIMEOUT_S") or 5)
TIDEBASE_WEBHOOK_TIMEOUT_S = float(os.environ.get("TIDEBASE_WEBHOOK_TIMEOUT_S") or 15)
"""Total time one attempt may take (connect, send, headers and body), enforced as a deadline."""
TIDEBASE_WEBHOOK_INFLIGHT_S = float(os.environ.get("TIDEBASE_WEBHOOK_INFLIGHT_S") or (TIDEBASE_WEBHOOK_TIMEOUT_S + 30))
"""How long a claimed attempt may stay unanswered before the sweep assumes its worker died and
sends the next attempt (same ``webhook-id``). Must exceed ``TIDEBASE_WEBHOOK_TIMEOUT_S``."""
TIDEBASE_WEBHOOK_ALLOW_HOSTS = [
    h.strip() for h in (os.environ.get("TIDEBASE_WEBHOOK_ALLOW_HOSTS") or "").split(",") if h.strip()
]
"""Host names, IPs or CIDRs that may be called even though they are private/loopback/link-local."""
TIDEBASE_WEBHOOK_CONCURRENCY = env_int("TIDEBASE_WEBHOOK_CONCURRENCY", 16)
TIDEBASE_WEBHOOK_SWEEP_BATCH = env_int("TIDEBASE_WEBHOOK_SWEEP_BATCH", 500)
