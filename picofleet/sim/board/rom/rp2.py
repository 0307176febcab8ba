# rp2 module stand-in (harness): only what a Pico W firmware touches.
_country = "XX"


def country(c=None):
    global _country
    if c is None:
        return _country
    _country = c


def bootsel_button():
    return 0
