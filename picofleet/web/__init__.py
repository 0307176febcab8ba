"""The hub's HTTP side: API, ingest endpoint, dashboard, OTA artifacts, USB management."""

from picofleet.web.app import HubContext, create_app

__all__ = ["HubContext", "create_app"]
