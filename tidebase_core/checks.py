"""System checks for running in production (README "Production settings").

Django's own ``security.W009`` does not catch the built-in development ``SECRET_KEY``: it is long
and varied enough to pass. ``tidebase_serve`` refuses it outright when the server listens beyond
localhost with debug off; these checks say so in ``manage.py check`` (and ``check --deploy``).
"""

from __future__ import annotations

import ipaddress
from typing import Any
from urllib.parse import parse_qs, urlparse

from django.conf import settings
from django.core.checks import CheckMessage, Tags, register
from django.core.checks import Warning as CheckWarning


def uses_development_secret_key() -> bool:
    """Whether ``SECRET_KEY`` is the built-in one (``settings.TIDEBASE_DEVELOPMENT_SECRET_KEY``, used
    when ``DJANGO_SECRET_KEY`` is unset). Anyone can read it, so anyone can forge what it signs."""
    return bool(settings.SECRET_KEY == settings.TIDEBASE_DEVELOPMENT_SECRET_KEY)


def is_loopback(host: str) -> bool:
    """Whether a listen address only accepts connections from this machine. ``0.0.0.0``, ``::``,
    an empty host and any name but ``localhost`` count as reachable from elsewhere."""
    host = host.strip().removeprefix("[").removesuffix("]")
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@register(Tags.security)
def check_development_secret_key(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    if settings.DEBUG or not uses_development_secret_key():
        return []
    return [
        CheckWarning(
            "DJANGO_SECRET_KEY is unset: the built-in development key signs sessions and CSRF tokens, "
            "and anyone can read it in the source.",
            hint="Set DJANGO_SECRET_KEY to 50+ random characters, e.g. "
            "python -c 'import secrets; print(secrets.token_urlsafe(50))'. tidebase_serve refuses this key "
            "when it listens beyond localhost.",
            id="tidebase.W001",
        )
    ]


@register(Tags.security, deploy=True)
def check_allowed_hosts(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    if "*" not in settings.ALLOWED_HOSTS:
        return []
    return [
        CheckWarning(
            "DJANGO_ALLOWED_HOSTS accepts any Host header ('*', the default).",
            hint="Set DJANGO_ALLOWED_HOSTS to the host names the server is reached by, comma-separated.",
            id="tidebase.W002",
        )
    ]


def unverified_tls_brokers(url: str) -> list[str]:
    """The ``rediss://`` URLs in a (``;``-separated) broker URL that do not ask for certificate
    verification: kombu then encrypts but accepts any certificate, and logs only a warning."""
    unverified = []
    for part in url.split(";"):
        parsed = urlparse(part.strip())
        if parsed.scheme == "rediss":
            wanted = (parse_qs(parsed.query).get("ssl_cert_reqs") or [""])[-1]
            if wanted not in ("required", "CERT_REQUIRED"):
                unverified.append(f"{parsed.scheme}://{parsed.hostname or ''}")
    return unverified


@register(Tags.security, deploy=True)
def check_broker_tls(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    unverified = unverified_tls_brokers(settings.CELERY_BROKER_URL)
    if not unverified:
        return []
    return [
        CheckWarning(
            f"CELERY_BROKER_URL ({', '.join(unverified)}) uses TLS without verifying the broker's certificate: "
            "rediss:// without ssl_cert_reqs=required accepts any certificate.",
            hint="Append ?ssl_cert_reqs=required to the URL, and &ssl_ca_certs=/path/to/ca.pem if the broker's "
            'certificate is not signed by a public CA (docs/deploy.md, "Brokers with TLS").',
            id="tidebase.W003",
        )
    ]
