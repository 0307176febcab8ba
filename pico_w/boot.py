# boot.py runs before main.py at every reset and is never replaced by OTA. It finishes or
# undoes an update a reset interrupted (otastate.on_boot), and while a new main.py is on
# trial it arms the watchdog and a deadline (hw.arm_trial): a main.py that hangs, drops to
# the REPL, or runs but never publishes resets, and after otastate.MAX_BOOTS unconfirmed
# boots the previous main.py comes back. If the updater itself fails, this boot is guarded
# the same way: the app cancels the deadline with its first good publish either way.


def _boot():
    trial, ms = True, None
    try:
        import otastate

        trial = otastate.on_boot()
        ms = otastate.trial_ms
    except Exception as e:  # a broken updater must never keep the app from starting
        print("boot: updater failed:", repr(e))
    if trial:
        import hw

        hw.arm_watchdog()
        hw.arm_trial(ms)


_boot()
