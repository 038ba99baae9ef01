"""Live tests of tidebase.pydantic_ai (durable Pydantic AI agents)."""

from __future__ import annotations
