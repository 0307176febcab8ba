# main.py: the app's entry, and the one file OTA replaces. VERSION lives here so that the
# version a device reports is always the one of the main.py it runs; a release bumps it.
# The modules it imports (app, pump, ...) and the updater (boot.py, ota, otastate, httpc,
# ed25519, sha512) are installed over USB and stay as they are across OTA updates.
VERSION = "1.0.0"


def _run():
    import asyncio

    import app

    asyncio.run(app.main(VERSION))


if __name__ == "__main__":
    _run()
