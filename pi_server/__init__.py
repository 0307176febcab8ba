"""The hub's HTTP side: API, ingest endpoint, dashboard, OTA artifacts, USB management."""

from pi_server.app import HubContext, create_app

__all__ = ["HubContext", "create_app"]
