"""Release engineering: what this build is, and signed, reproducible Pi release bundles.

    info      BuildInfo: package version, source commit, firmware versions (picofleet version,
              /health)
    signing   the release key, key ids, meta.json, and verifying a bundle before install
    bundle    building the bundle from a source checkout (release/build_bundle.py, make release)
    cli       ``picofleet version``, ``picofleet release keygen|verify``

Nothing here runs at import; ``cryptography`` is imported only by the modules that sign.
"""
