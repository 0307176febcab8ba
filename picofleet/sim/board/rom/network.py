# network stand-in (harness): the Pico W's CYW43 station. The host plays the access point
# (up or down, its SSID and password) and decides join progress and link loss.
import _rt

STA_IF = 0
AP_IF = 1
STAT_IDLE = 0
STAT_CONNECTING = 1
STAT_WRONG_PASSWORD = -3
STAT_NO_AP_FOUND = -2
STAT_CONNECT_FAIL = -1
STAT_GOT_IP = 3
_hostname = "PicoW"
_wlans = {}


def hostname(name=None):
    global _hostname
    if name is None:
        return _hostname
    _hostname = name


def country(c=None):
    import rp2

    return rp2.country(c)


class WLAN:
    PM_NONE = 16
    PM_PERFORMANCE = 10555714
    PM_POWERSAVE = 17
    IF_STA = 0
    IF_AP = 1
    SEC_OPEN = 0
    SEC_WPA2 = 4194308

    def __new__(cls, interface=STA_IF):
        w = _wlans.get(interface)
        if w is None:
            w = object.__new__(cls)
            w._if = interface
            w._active = False
            _wlans[interface] = w
        return w

    def __init__(self, interface=STA_IF):
        pass

    def active(self, v=None):
        if v is None:
            return self._active
        self._active = bool(v)
        if not v:
            _rt.call("wifi_leave")

    def connect(self, ssid=None, key=None, *, bssid=None, security=None):
        if not self._active:
            raise OSError("STA must be active")
        _rt.call("wifi_join", ssid or "", key or "")

    def disconnect(self):
        _rt.call("wifi_leave")

    def isconnected(self):
        return _rt.call("wifi_status") == STAT_GOT_IP

    def status(self, param=None):
        if param is None:
            return _rt.call("wifi_status")
        if param == "rssi":
            if _rt.call("wifi_status") != STAT_GOT_IP:
                raise OSError(1)
            return _rt.call("rssi")
        raise ValueError("unknown status param")

    def config(self, *args, **kw):
        if args:
            if args[0] == "mac":
                return bytes.fromhex(_rt.call("uid"))[:6]
            if args[0] in ("ssid", "essid"):
                return ""
            if args[0] == "pm":
                return WLAN.PM_PERFORMANCE
            if args[0] == "hostname":
                return _hostname
            raise ValueError("unknown config param")

    def ifconfig(self, *args):
        if self.isconnected():
            return ("192.168.4.2", "255.255.255.0", "192.168.4.1", "192.168.4.1")
        return ("0.0.0.0", "0.0.0.0", "0.0.0.0", "0.0.0.0")

    def scan(self):
        return []
