"""The Tidebase wire protocol on django-ninja. Routers are thin: parse, authorize, call one
service or selector, serialize with ``tidebase_core.wire``."""
