"""Several faultds — one per node of a cluster — driven as one.

    nodes = faultd.Nodes(["198.18.0.1=unix:/run/faultd/a.sock", "198.18.0.2=10.0.0.2:7447"])
    nodes.drop(53, protocol="udp").all()          # the same fault on every node
    with nodes.partition([2380], isolate=["198.18.0.1"]).all():
        ...                                       # 198.18.0.1 is cut off from the others

Every call goes to all nodes at once and returns a :class:`PerNode`: a result per node, in
the order given, each a value or the exception that node raised. ``.all()`` returns the
values or raises :class:`NodesFailed` naming every node that failed — after removing what
the other nodes added, so a fault is on all nodes or on none.
"""

import ipaddress
from concurrent.futures import ThreadPoolExecutor

from faultd.client import Client, Fault, _PROTOCOLS, _choice, _millis
from faultd.errors import FaultdError, InvalidArgument

_VERBS = (
    "drop reset refuse limit_bytes limit_age record loss delay rate corrupt duplicate stall slice"
).split()


def parse_node(text):
    """``ADDRESS`` or ``NODE_IP=ADDRESS`` → (address, ip or None), as faultctl reads them."""
    text = text.strip()
    head, sep, tail = text.partition("=")
    if sep:
        try:
            return tail.strip(), ipaddress.ip_address(head)
        except ValueError:
            if not text.startswith("unix:") and "://" not in text:
                raise InvalidArgument(
                    f"{text!r}: {head!r} is not an IP address (write NODE_IP=ADDRESS)"
                ) from None
    return text, None


class NodesFailed(FaultdError):
    """Some nodes failed; ``failures`` is a list of (node, exception)."""

    def __init__(self, failures, of):
        parts = "; ".join(f"{node}: {error}" for node, error in failures)
        super().__init__(f"{len(failures)} of {of} faultd nodes failed: {parts}")
        self.failures = failures


class PerNode:
    """A result per node: ``results`` is a list of (node, value or exception)."""

    def __init__(self, results):
        self.results = results

    @property
    def failures(self):
        return [(node, r) for node, r in self.results if isinstance(r, Exception)]

    def ok(self):
        return not self.failures

    def all(self):
        """Every node's value; or, when a node failed, removes what the others added
        (faults, lists of faults) and raises :class:`NodesFailed`."""
        failures = self.failures
        if failures:
            for _, value in self.results:
                _remove(value)
            raise NodesFailed(failures, len(self.results))
        return Added([value for _, value in self.results])

    def __iter__(self):
        return iter(self.results)

    def __repr__(self):
        return f"<faultd.PerNode {self.results!r}>"


class Added(list):
    """The values of :meth:`PerNode.all`; as a context manager, removes the faults in it
    on exit (a partition heals)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for value in self:
            _remove(value)
        return False


def _remove(value):
    if isinstance(value, Fault):
        value.remove()
    elif isinstance(value, list):
        for item in value:
            _remove(item)


class Nodes:
    """A :class:`faultd.Client` per node (``ADDRESS`` or ``NODE_IP=ADDRESS``; the IPs are
    needed by :meth:`partition`). The options are each client's; with ``session=True``
    each node removes this handle's faults when the process ends."""

    def __init__(self, nodes, **client_options):
        parsed = [parse_node(n) for n in nodes]
        if not parsed:
            raise InvalidArgument("nodes: no node given")
        self.names = [n.strip() for n in nodes]
        self.ips = [ip for _, ip in parsed]
        self.clients = [Client(addr, **client_options) for addr, _ in parsed]

    def each(self, call):
        """``call(client, i)`` on every node at once; a :class:`PerNode`."""

        def one(i):
            try:
                return call(self.clients[i], i)
            except Exception as e:  # the node's result
                return e

        with ThreadPoolExecutor(max_workers=len(self.clients)) as pool:
            values = list(pool.map(one, range(len(self.clients))))
        return PerNode(list(zip(self.names, values)))

    def __getattr__(self, verb):
        """``nodes.drop(2379, peer=…)`` and every other verb of :class:`faultd.Client`: the
        same fault on every node."""
        if verb not in _VERBS:
            raise AttributeError(verb)

        def apply(*args, **kwargs):
            return self.each(lambda client, _: getattr(client, verb)(*args, **kwargs))

        apply.__name__ = verb
        return apply

    def list(self):
        """Every node's faults."""
        return self.each(lambda client, _: client.list())

    def clear(self, label=None, owner_uid=None, mine=False):
        """Removes the faults on every node (or those with this label…); how many each."""
        return self.each(lambda client, _: client.clear(label, owner_uid, mine))

    def partition(self, ports, isolate, *, protocol="tcp", ttl=None, label="partition"):
        """Cuts the nodes whose IPs are in ``isolate`` off from the others on ``ports``:
        every node drops the ports' traffic (both directions) whose peer is a node of the
        other side (a fault's peer is the flow's end that is not the port's, so each side
        needs its own faults). A list of faults per node; a node that refuses one removes
        the ones it added before."""
        plan = partition_plan(self.ips, self.names, ports, isolate)
        _choice(_PROTOCOLS, protocol, "target.protocol", "a protocol")
        if ttl is not None:
            _millis(ttl, "ttl_ms")

        def add(client, i):
            added = []
            try:
                for port, peer in plan[i]:
                    added.append(
                        client.drop(port, protocol=protocol, peer=peer, ttl=ttl, label=label)
                    )
            except Exception:
                _remove(added)
                raise
            return added

        return self.each(add)

    def close(self):
        for client in self.clients:
            client.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


def partition_plan(ips, names, ports, isolate):
    """For each node, the (port, peer) pairs it drops to cut ``isolate`` off."""
    ports = list(ports)
    if not ports:
        raise InvalidArgument("partition: at least one port")
    for name, ip in zip(names, ips):
        if ip is None:
            raise InvalidArgument(
                f"partition: {name} has no IP: give each node as NODE_IP=ADDRESS"
            )
    try:
        isolated = {ipaddress.ip_address(i) for i in isolate}
    except ValueError as e:
        raise InvalidArgument(f"isolate: {e}") from None
    strangers = isolated - set(ips)
    if strangers:
        raise InvalidArgument(f"isolate: {sorted(map(str, strangers))} not the IP of any node")
    if not isolated or isolated >= set(ips):
        raise InvalidArgument("isolate: name some of the nodes' IPs, not none or all")

    def peer(ip):
        return f"{ip}/{ip.max_prefixlen}"

    return [
        [
            (port, peer(other))
            for port in ports
            for other in ips
            if (other in isolated) != (ip in isolated)
        ]
        for ip in ips
    ]
