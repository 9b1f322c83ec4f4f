"""faultd's Python client: make the network misbehave from a test, in the kernel.

    import faultd

    with faultd.drop(2379, direction="to-port"):
        ...  # etcd's clients hear nothing from here on

Faults are bound to the client's session: when the process exits, crashes or is killed,
faultd removes them within a second. :class:`Nodes` drives the faultd of every node of a
cluster as one (a fault on all, a partition, results per node); :class:`Scenario` plays
the TOML scenarios of ``faultctl run``. The pytest plugin (``faultd.pytest_plugin``,
registered by entry point) adds the ``faultd`` and ``faultd_client`` fixtures.
"""

import atexit
import threading

from faultd.client import DEFAULT_TCP, Client, Fault, default_address
from faultd.nodes import Nodes, NodesFailed, PerNode
from faultd.scenario import Scenario, ScenarioError, ScenarioFailed
from faultd.errors import (
    Exhausted,
    FaultdError,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Refused,
    Unavailable,
)

__all__ = [
    "Client",
    "Nodes",
    "NodesFailed",
    "PerNode",
    "Scenario",
    "ScenarioError",
    "ScenarioFailed",
    "Fault",
    "default_address",
    "default_client",
    "set_default_address",
    "DEFAULT_TCP",
    "FaultdError",
    "InvalidArgument",
    "NotFound",
    "Refused",
    "Exhausted",
    "PermissionDenied",
    "Unavailable",
]

_default = None
_default_lock = threading.Lock()


def default_client():
    """The client the module-level functions use, connected at first use."""
    global _default
    with _default_lock:
        if _default is None:
            _default = Client()
            atexit.register(_default.close)
        return _default


def set_default_address(addr):
    """Makes ``addr`` the address of every :class:`Client` made without one and of the
    module-level functions (``faultd.drop(...)``, ``with faultd.limit_bytes(...)``) in this
    process, ahead of ``FAULTD_ADDR``; ``None`` goes back to :func:`default_address`'s own
    rule. The module-level functions' client, if connected elsewhere, is closed (its faults
    end with its session) and reconnects at next use. The pytest plugin calls this with the
    faultd that ``--faultd-start`` started, so that everything in the test session reaches it.
    """
    global _default
    import faultd.client as _client

    _client._chosen = addr or None
    with _default_lock:
        if _default is not None and _default.addr != default_address():
            _default.close()
            _default = None


def _shortcut(name):
    def call(*args, **kwargs):
        return getattr(default_client(), name)(*args, **kwargs)

    call.__name__ = name
    call.__doc__ = getattr(Client, name).__doc__
    return call


_SHORTCUTS = (
    "drop reset refuse limit_bytes limit_age record loss delay rate corrupt duplicate stall slice "
    "partition "
    "list remove clear stats events capabilities"
).split()
for _name in _SHORTCUTS:
    globals()[_name] = _shortcut(_name)
    __all__.append(_name)
del _name
