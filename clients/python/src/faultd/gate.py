"""userver's chaos gates (``pytest_userver.chaos.TcpGate`` / ``UdpGate``) on faultd.

A gate holds one condition per direction, like userver's interceptors: each
``to_server_*`` call replaces the condition on packets to the server's port
(``direction="to-port"``), each ``to_client_*`` the one on packets from it
(``direction="from-port"``); ``*_pass`` lifts it. No proxy: the client connects to the
server's real port. See clients/python/README.md for the table.
"""

from faultd.errors import InvalidArgument

TO_SERVER = "to-port"
TO_CLIENT = "from-port"


class Gate:
    def __init__(self, client, port, protocol="tcp", peer=""):
        self._client = client
        self.port = port
        self._target = {"protocol": protocol, "peer": peer}
        self._faults = {TO_SERVER: None, TO_CLIENT: None}

    def _set(self, direction, method, *args, **kwargs):
        self._lift(direction)
        add = getattr(self._client, method)
        self._faults[direction] = add(
            self.port, *args, direction=direction, **kwargs, **self._target
        )

    def _lift(self, direction):
        fault = self._faults[direction]
        self._faults[direction] = None
        if fault is not None:
            fault.remove()

    def reset(self):
        """Both directions pass again (what userver does between tests)."""
        self._lift(TO_SERVER)
        self._lift(TO_CLIENT)

    # One method per userver condition and direction, generated below.


def _limit_time(self, direction, timeout, jitter=0.0):
    if jitter:
        raise InvalidArgument(
            "jitter: faultd's limit_age has no per-connection jitter; pass jitter=0"
        )
    self._set(direction, "limit_age", timeout)


_CONDITIONS = {
    # userver name: how it is done on faultd, given (self, direction, *args)
    "pass": lambda self, d: self._lift(d),
    "noop": lambda self, d: self._set(_other(d), "stall"),
    "drop": lambda self, d: self._set(d, "drop"),
    "delay": lambda self, d, delay: self._set(d, "delay", delay),
    "close_on_data": lambda self, d: self._set(d, "limit_bytes", 0),
    "corrupt_data": lambda self, d: self._set(d, "corrupt", 100.0),
    "limit_bps": lambda self, d, bps: self._set(d, "rate", int(bps * 8)),
    "limit_time": _limit_time,
    "limit_bytes": lambda self, d, limit: self._set(d, "limit_bytes", limit),
}


def _other(direction):
    # The reader that stops is on the far side: its window advertisements travel back.
    return TO_CLIENT if direction == TO_SERVER else TO_SERVER


def _method(condition, direction):
    impl = _CONDITIONS[condition]

    def method(self, *args, **kwargs):
        impl(self, direction, *args, **kwargs)

    side = "server" if direction == TO_SERVER else "client"
    method.__name__ = f"to_{side}_{condition}"
    return method


for _condition in _CONDITIONS:
    for _direction, _side in ((TO_SERVER, "server"), (TO_CLIENT, "client")):
        setattr(Gate, f"to_{_side}_{_condition}", _method(_condition, _direction))
del _condition, _direction, _side
