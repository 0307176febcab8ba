"""Security plumbing of the hub: request limits, the runtime database role, secret rotation.

limits.BodySizeLimit          ASGI middleware: 413 for request bodies over the limit
redact.redact_payload         mask credentials in stored payload text before showing it
roles.ensure_runtime_login    give the least-privilege role a login, return its URL
rotation.rotate_fleet_secret  new fleet secret, the old one valid for a grace period
cli.register                  ``picofleet creds rotate | renewed | end-grace``
"""
