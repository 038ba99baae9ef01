"""Settings for the Tidebase server: everything comes from the environment.

Every variable is documented in README.md ("Configuration").
"""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlparse

BASE_DIR = Path(__file__).resolve().parent.parent
# The project-level templates/ and static/: beside manage.py in a checkout, inside this package
# in an installed wheel (setup.py copies them there; docs/deploy.md, "The package").
ASSETS_DIR = Path(__file__).resolve().parent if (Path(__file__).resolve().parent / "templates").is_dir() else BASE_DIR


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

TIDEBASE_DB_POOL_SIZE = env_int("TIDEBASE_DB_POOL_SIZE", 8)
"""Postgres connections per web process, at most: a psycopg pool shared by the process's threads.
A request takes a connection at its first query and gives it back when it ends; long-polls and
SSE streams give theirs back while they wait. 0: one persistent connection per thread instead."""
if os.environ.get("TIDEBASE_PROCESS") == "web" and TIDEBASE_DB_POOL_SIZE > 0:  # set by config/wsgi.py
    DATABASES["default"]["CONN_MAX_AGE"] = 0  # the pool keeps connections; Django must not
    DATABASES["default"]["OPTIONS"]["pool"] = {
        "min_size": 1,
        "max_size": TIDEBASE_DB_POOL_SIZE,
        # A request that waits longer than this for a free connection gets 503 pool_timeout.
        "timeout": float(os.environ.get("TIDEBASE_DB_POOL_TIMEOUT_S") or 10),
        "name": "tidebase-web",
    }

DEBUG = env_bool("DJANGO_DEBUG", False)
TIDEBASE_DEVELOPMENT_SECRET_KEY = "insecure-dev-key-set-DJANGO_SECRET_KEY-in-production"  # noqa: S105
"""Used when DJANGO_SECRET_KEY is unset: system check tidebase.W001 warns with debug off, and
tidebase_serve refuses it beyond localhost (tidebase_core/checks.py)."""
SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY") or TIDEBASE_DEVELOPMENT_SECRET_KEY
ALLOWED_HOSTS = [h.strip() for h in os.environ.get("DJANGO_ALLOWED_HOSTS", "*").split(",") if h.strip()]
CSRF_TRUSTED_ORIGINS = [o.strip() for o in os.environ.get("DJANGO_CSRF_TRUSTED_ORIGINS", "").split(",") if o.strip()]

# --- Production security: HTTPS, login throttling, CSP (README "Production settings") -----
TIDEBASE_HTTPS = env_bool("TIDEBASE_HTTPS", False)
"""Served to browsers over HTTPS (directly or behind a TLS-terminating proxy): turns on secure
cookies, the HTTPS redirect and HSTS together. Each can still be set on its own below."""
SESSION_COOKIE_SECURE = CSRF_COOKIE_SECURE = env_bool("DJANGO_SECURE_COOKIES", TIDEBASE_HTTPS)
SECURE_SSL_REDIRECT = env_bool("DJANGO_SECURE_SSL_REDIRECT", TIDEBASE_HTTPS)
SECURE_HSTS_SECONDS = env_int("DJANGO_HSTS_SECONDS", 31_536_000 if TIDEBASE_HTTPS else 0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("DJANGO_HSTS_INCLUDE_SUBDOMAINS", True)
SECURE_HSTS_PRELOAD = env_bool("DJANGO_HSTS_PRELOAD", True)


def _proxy_ssl_header(raw: str) -> tuple[str, str] | None:
    """``X-Forwarded-Proto: https`` (or ``=``) → ``("HTTP_X_FORWARDED_PROTO", "https")``."""
    if not raw.strip():
        return None
    name, sep, value = raw.replace("=", ":", 1).partition(":")
    if not sep or not name.strip() or not value.strip():
        raise ValueError(f"DJANGO_SECURE_PROXY_SSL_HEADER must look like 'X-Forwarded-Proto: https', got {raw!r}")
    meta = name.strip().upper().replace("-", "_")
    return (meta if meta.startswith("HTTP_") else "HTTP_" + meta), value.strip()


SECURE_PROXY_SSL_HEADER = _proxy_ssl_header(os.environ.get("DJANGO_SECURE_PROXY_SSL_HEADER", ""))
"""Only behind a proxy that sets this header on every request and drops it from clients' requests."""
TIDEBASE_PROXY_COUNT = env_int("TIDEBASE_PROXY_COUNT", 0)
"""Reverse proxies in front of the server that append to X-Forwarded-For: the login throttle keys
on the address the outermost one saw. 0: the connection's address (REMOTE_ADDR)."""

# Login throttling (django-axes): failures are counted in Postgres per username + client
# address, so every web process and machine sees the same count.
AUTHENTICATION_BACKENDS = ["axes.backends.AxesStandaloneBackend", "django.contrib.auth.backends.ModelBackend"]
AXES_FAILURE_LIMIT = env_int("TIDEBASE_LOGIN_FAILURE_LIMIT", 5)
AXES_COOLOFF_TIME = timedelta(seconds=env_int("TIDEBASE_LOGIN_COOLOFF_S", 900))
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_CLIENT_IP_CALLABLE = "dashboard.throttle.client_ip"
AXES_LOCKOUT_TEMPLATE = "registration/locked_out.html"
AXES_RESET_ON_SUCCESS = True
AXES_DISABLE_ACCESS_LOG = True  # successful logins: not recorded (the failures are, in AccessAttempt)
AXES_VERBOSE = False  # no start-up banner in every process

# Content-Security-Policy (django-csp) for the dashboard, the admin and the API docs: nothing
# inline, nothing from elsewhere. The protocol routes never pass this middleware (config/wsgi.py).
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": ["'self'"],
        "script-src": ["'self'"],
        "style-src": ["'self'"],
        "img-src": ["'self'", "data:"],
        "connect-src": ["'self'"],
        "font-src": ["'self'"],
        "object-src": ["'none'"],
        "base-uri": ["'self'"],
        "form-action": ["'self'"],
        "frame-ancestors": ["'none'"],
    },
}

PORT = env_int("PORT", 7373)

# --- Tidebase protocol settings (PROTOCOL.md §16) -----------------------------------------
TIDEBASE_API_KEY = os.environ.get("TIDEBASE_API_KEY") or None
TIDEBASE_AUTH = (os.environ.get("TIDEBASE_AUTH") or "auto").strip().lower()
"""``auto``: open until the first app key is created, closed from then on (revoking every key
does not reopen it); ``required``: always closed; ``open``: open to everyone, keys or not."""
if TIDEBASE_AUTH not in {"auto", "required", "open"}:
    raise ValueError(f"TIDEBASE_AUTH must be auto, required or open, got {TIDEBASE_AUTH!r}")
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

# --- Approvals: email and Slack (docs/approvals.md) ---------------------------------------------
TIDEBASE_APPROVAL_LINK_TTL_S = env_int("TIDEBASE_APPROVAL_LINK_TTL_S", 24 * 3600)
"""How long a one-click Approve/Reject link in an approval email stays valid."""
TIDEBASE_SLACK_SIGNING_SECRET = os.environ.get("TIDEBASE_SLACK_SIGNING_SECRET") or None
"""The Slack app's signing secret: the interactive callback refuses every request without it."""
TIDEBASE_SLACK_BOT_TOKEN = os.environ.get("TIDEBASE_SLACK_BOT_TOKEN") or None
"""A bot token (``xoxb-…``) for policies whose Slack target is a channel id (chat.postMessage)."""
TIDEBASE_SLACK_API_URL = (os.environ.get("TIDEBASE_SLACK_API_URL") or "https://slack.com/api").removesuffix("/")
EMAIL_BACKEND = os.environ.get("EMAIL_BACKEND") or "django.core.mail.backends.smtp.EmailBackend"
EMAIL_HOST = os.environ.get("EMAIL_HOST") or "localhost"
EMAIL_PORT = env_int("EMAIL_PORT", 25)
EMAIL_HOST_USER = os.environ.get("EMAIL_HOST_USER") or ""
EMAIL_HOST_PASSWORD = os.environ.get("EMAIL_HOST_PASSWORD") or ""
EMAIL_USE_TLS = env_bool("EMAIL_USE_TLS", False)
EMAIL_USE_SSL = env_bool("EMAIL_USE_SSL", False)
EMAIL_TIMEOUT = env_int("EMAIL_TIMEOUT", 15)
DEFAULT_FROM_EMAIL = os.environ.get("DEFAULT_FROM_EMAIL") or "tidebase@localhost"
TIDEBASE_API_KEY_CACHE_S = float(os.environ.get("TIDEBASE_API_KEY_CACHE_S") or 5)
"""How long a verified app API key is trusted before it is looked up again (revocation delay)."""

TIDEBASE_LARGE_BODY_BYTES = env_int("TIDEBASE_LARGE_BODY_BYTES", 1024 * 1024)
TIDEBASE_LARGE_BODY_CONCURRENCY = env_int("TIDEBASE_LARGE_BODY_CONCURRENCY", 2)
TIDEBASE_LARGE_BODY_WAIT_S = float(os.environ.get("TIDEBASE_LARGE_BODY_WAIT_S") or 30)
"""Per web process, at most TIDEBASE_LARGE_BODY_CONCURRENCY requests with a body above
TIDEBASE_LARGE_BODY_BYTES are processed at once; others wait up to TIDEBASE_LARGE_BODY_WAIT_S,
then get 503 ``busy`` (tidebase_core.middleware.LargeBodies)."""

DATA_UPLOAD_MAX_MEMORY_SIZE = TIDEBASE_MAX_BODY_BYTES

TIDEBASE_WEB_THREADS = env_int("TIDEBASE_WEB_THREADS", 16)
"""Threads per web process that run Django (tidebase_core.gateway); connections, parked
long-polls and SSE streams wait on the event loop, not on these."""
TIDEBASE_BODY_TIMEOUT_S = float(os.environ.get("TIDEBASE_BODY_TIMEOUT_S") or 60)
"""A request body must arrive whole within this many seconds of its headers, else 408."""
TIDEBASE_FORM_MAX_BODY_BYTES = env_int("TIDEBASE_FORM_MAX_BODY_BYTES", 2621440)
"""Largest body for paths outside the wire protocol (dashboard forms, admin): 2.5 MiB."""

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
    "retention",  # retention policies, the pruner, the Storage page
    "django_htmx",
    "template_partials",
    "axes",  # login throttling
    "csp",  # Content-Security-Policy
    "ninja",  # /api/docs from vendored Swagger UI files, not a CDN
]

MIDDLEWARE = [
    # The API middleware answers protocol paths (auth, CORS, body limit) before the
    # session/CSRF stack, which the wire protocol must never see (PROTOCOL.md §19.9).
    "tidebase_core.middleware.ProtocolMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "csp.middleware.CSPMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",  # serves static/ (vendored htmx, Chart.js) under gunicorn
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "axes.middleware.AxesMiddleware",  # last: turns a locked-out login into the lockout page
]
APPEND_SLASH = False

ROOT_URLCONF = "config.urls"
WSGI_APPLICATION = "config.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [ASSETS_DIR / "templates"],
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
STATIC_ROOT = Path(os.environ.get("DJANGO_STATIC_ROOT") or BASE_DIR / "staticfiles")
"""Where ``collectstatic`` puts the files (optional: WhiteNoise serves them from the finders too)."""
STATICFILES_DIRS = [ASSETS_DIR / "static"] if (ASSETS_DIR / "static").is_dir() else []
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
LOGIN_URL = "/dashboard/login/"
LOGIN_REDIRECT_URL = "/dashboard/"
LOGOUT_REDIRECT_URL = "/dashboard/login/"
# Serve static files straight from the finders: no collectstatic step for `make run`.
WHITENOISE_USE_FINDERS = True

from tidebase_core.logs import formatter_name, quiet_warnings  # noqa: E402  (plain module, no Django)

TIDEBASE_LOG_LEVEL = os.environ.get("TIDEBASE_LOG_LEVEL", "INFO").upper()
TIDEBASE_LOG_FORMAT = os.environ.get("TIDEBASE_LOG_FORMAT", "text")
"""``text`` (default) or ``json``: one object per line with ``request_id`` / ``task_id``."""
# Celery's per-task and per-tick INFO lines (task received/succeeded, "Sending due task", every
# 5 s) say nothing a person needs; our tasks log what they did when they did something.
_CHATTER = "DEBUG" if TIDEBASE_LOG_LEVEL == "DEBUG" else "WARNING"
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {"context": {"()": "tidebase_core.logs.ContextFilter"}},
    "formatters": {
        "text": {"()": "tidebase_core.logs.TextFormatter"},
        "json": {"()": "tidebase_core.logs.JsonFormatter"},
    },
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "filters": ["context"],
            "formatter": formatter_name(TIDEBASE_LOG_FORMAT),
        }
    },
    "root": {"handlers": ["console"], "level": TIDEBASE_LOG_LEVEL},
    # 4xx answers are part of the protocol (409 run_leased while a lease lapses, ...): not warnings.
    # axes: failures and lockouts are warnings; its INFO lines (one per login) are not kept.
    "loggers": {
        "django.request": {"level": "ERROR"},
        "axes": {"level": "WARNING"},
        **{
            name: {"level": _CHATTER}
            for name in (
                "celery.beat",
                "celery.app.trace",
                "celery.worker.strategy",
                "celery.worker.consumer.connection",
                "pgserver",  # the embedded Postgres: "exiting", "cleaning last handle" per process
            )
        },
    },
}
quiet_warnings()

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

# --- retention (owned by the retention app; README "Retention") ---------------------------
from retention.conf import env_policy  # noqa: E402  (plain module, no Django)

TIDEBASE_RETAIN = env_policy(os.environ)
"""Global retention defaults (TIDEBASE_RETAIN_*_DAYS, TIDEBASE_RETAIN_STATE_VERSIONS): None keeps
forever, which is every field's default. The dashboard's Storage page overrides them per workflow."""
TIDEBASE_RETENTION_INTERVAL_S = env_int("TIDEBASE_RETENTION_INTERVAL_S", 3600)
"""How often beat applies the policy; 0: never (``manage.py tidebase_prune`` still does)."""
TIDEBASE_RETENTION_PASS_S = env_int("TIDEBASE_RETENTION_PASS_S", 300)
"""Longest pass of the beat task; the next pass continues."""
TIDEBASE_RETENTION_BATCH = env_int("TIDEBASE_RETENTION_BATCH", 1000)
"""Rows per pruning transaction."""
TIDEBASE_RETENTION_LOCK_TIMEOUT_MS = env_int("TIDEBASE_RETENTION_LOCK_TIMEOUT_MS", 1000)
"""Longest lock wait of a pruning transaction; it is rolled back and retried after it."""
