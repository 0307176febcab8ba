# A socket module for the unit cases: none of them reaches the network (a case hands the
# module under test a scripted socket instead). The board harness gives real sockets.


def getaddrinfo(host, port, *args):
    raise OSError(-2)  # what lwIP's failed lookup gives


def socket(*args):
    raise OSError(12)
