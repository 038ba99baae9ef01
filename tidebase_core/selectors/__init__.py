"""Reads for the API and the dashboard."""
