# boot.py runs before main.py at every reset and is never replaced by OTA. It finishes or
# undoes an update a reset interrupted (otastate.on_boot), and while a new main.py is on
# trial it arms the watchdog: a main.py that hangs or drops to the REPL still resets, and
# after otastate.MAX_BOOTS unconfirmed boots the previous main.py comes back.


def _boot():
    try:
        import otastate

        trial = otastate.on_boot()
    except Exception as e:  # a broken updater must never keep the app from starting
        print("boot: updater failed:", repr(e))
        return
    if trial:
        import hw

        hw.arm_watchdog()


_boot()
