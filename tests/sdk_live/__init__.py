"""Live tests of the tidebase SDK against a real server."""

from __future__ import annotations
