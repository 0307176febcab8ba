# network for the unit cases: a station that is never up.
STA_IF = 0


class WLAN:
    PM_NONE = 0

    def __init__(self, iface=STA_IF):
        self.up = False

    def active(self, on=None):
        return True

    def config(self, **kw):
        pass

    def connect(self, ssid, password):
        pass

    def disconnect(self):
        self.up = False

    def isconnected(self):
        return self.up

    def status(self, what=None):
        return -60 if what == "rssi" else 1
