# httpc: the pure parts (URLs, the Date header).
import httpc


def test_split_url():
    assert httpc.split_url("http://10.0.0.2:8000/ota/artifacts/ab") == (
        "10.0.0.2",
        8000,
        "/ota/artifacts/ab",
    )
    assert httpc.split_url("http://hub") == ("hub", 80, "/")
    for bad in ("https://hub/", "ftp://x", "http://:80/", "http://h:x/"):
        try:
            httpc.split_url(bad)
            raise AssertionError(bad)
        except httpc.HttpError:
            pass


def test_parse_date():
    assert httpc.parse_date("Sun, 06 Nov 1994 08:49:37 GMT") == 784111777
    assert httpc.parse_date("Thu, 01 Jan 1970 00:00:00 GMT") == 0
    assert httpc.parse_date("Tue, 29 Feb 2028 12:00:00 GMT") == 1835438400
    assert httpc.parse_date("garbage") is None
    assert httpc.parse_date("") is None
