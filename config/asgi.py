"""ASGI entry point: what ``tidebase_core.server`` serves (uvicorn, ``make run``).

The gateway (``tidebase_core.gateway``) holds connections on the event loop and runs the WSGI
application of ``config.wsgi`` (step hot path, protocol handler, dashboard) on its threads.
"""

from __future__ import annotations

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

from config.wsgi import application as wsgi_application
from tidebase_core.gateway import Gateway

application = Gateway(wsgi_application)
