"""picofleet: the shared contract of every hub component.

Public surface: settings, topics, credentials, database access and logging live in their
own modules (``picofleet.settings``, ``picofleet.topics``, ...); nothing here runs at import.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
