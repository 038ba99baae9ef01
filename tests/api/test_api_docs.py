"""The API reference works offline (issue #13, item 7): ``/api/docs`` loads its UI from our own
static files, never from a CDN. Every URL the page references must be local and served."""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser

import pytest
from django.test import Client

pytestmark = pytest.mark.django_db

ABSOLUTE = re.compile(r"^(?:[a-z][a-z0-9+.-]*:)?//", re.IGNORECASE)


class References(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []
        self.settings_json = ""
        self._in_settings = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if name in ("src", "href", "action", "poster", "data") and value:
                self.urls.append(value)
        self._in_settings = tag == "script" and ("id", "swagger-settings") in attrs

    def handle_data(self, data: str) -> None:
        if self._in_settings:
            self.settings_json += data


def test_api_docs_load_only_local_assets() -> None:
    client = Client()
    page = client.get("/api/docs")
    assert page.status_code == 200
    html = page.content.decode()
    refs = References()
    refs.feed(html)
    assert refs.urls, "the docs page references no assets: the check below would prove nothing"
    remote = [url for url in refs.urls if ABSOLUTE.match(url)]
    assert remote == [], f"/api/docs references non-local URLs: {remote}"
    assert not re.search(r"https?://", html), "an absolute URL in the docs page"
    for url in refs.urls:
        asset = client.get(url)
        assert asset.status_code == 200, url
        if url.endswith(".js") and "bundle" not in url:  # our init script: no fetch from elsewhere
            body = b"".join(asset.streaming_content) if asset.streaming else asset.content  # type: ignore[attr-defined]
            assert not re.search(rb"https?://", body), url
    settings = json.loads(refs.settings_json)
    assert not ABSOLUTE.match(settings["url"]), settings
    # Swagger UI's default validatorUrl is validator.swagger.io (a badge image on any host but
    # localhost): it must be switched off explicitly.
    assert "validatorUrl" in settings, settings
    assert settings["validatorUrl"] is None, settings
