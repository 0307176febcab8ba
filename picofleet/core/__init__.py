"""The contract every part of the hub shares: settings, topics, credentials, the database and
its migrations, the embedded PostgreSQL launcher, logs, files and runtime helpers.

This floor imports nothing else from picofleet (tests/layout/test_floors.py checks it)."""
