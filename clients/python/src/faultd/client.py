"""A synchronous faultd client whose faults die with it.

Every fault a :class:`Client` adds is bound to its session (faultd's ``OpenSession``
stream, opened at first use and held by a background thread): when the process exits,
crashes or is killed, the stream ends and faultd removes the faults within a second.
"""

import datetime
import os
import sys
import threading

import grpc

from faultd.errors import InvalidArgument, Unavailable, from_rpc_error
from faultd.v1 import faultd_pb2 as pb
from faultd.v1 import faultd_pb2_grpc as pb_grpc

DEFAULT_TCP = "127.0.0.1:7447"
SOCKET_DIR = "/run/faultd"

_PROTOCOLS = {"tcp": pb.PROTOCOL_TCP, "udp": pb.PROTOCOL_UDP, "any": pb.PROTOCOL_ANY}
_DIRECTIONS = {
    "both": pb.DIRECTION_BOTH,
    "to-port": pb.DIRECTION_TO_PORT,
    "from-port": pb.DIRECTION_FROM_PORT,
}
_THEN = {None: pb.THEN_UNSPECIFIED, "drop": pb.THEN_DROP, "reset": pb.THEN_RESET}
_REFUSE = {"rst": pb.REFUSE_MODE_RST, "drop": pb.REFUSE_MODE_DROP}


# The address faultd.set_default_address() chose for this process (the pytest plugin's
# --faultd-start daemon); None when nothing did.
_chosen = None


def default_address():
    """The address :func:`faultd.set_default_address` chose for this process (the pytest
    plugin does, for the faultd ``--faultd-start`` started); else ``FAULTD_ADDR`` when set;
    else the Unix socket of the faultd serving this thread's network namespace,
    ``/run/faultd/faultd-<netns inode>.sock``, when it exists (faultd's own rule); else
    ``127.0.0.1:7447``."""
    if _chosen:
        return _chosen
    env = os.environ.get("FAULTD_ADDR")
    if env:
        return env
    try:
        # thread-self, not self: a thread may have moved into another namespace (setns).
        netns = os.stat("/proc/thread-self/ns/net").st_ino
    except OSError:
        return DEFAULT_TCP
    path = os.path.join(SOCKET_DIR, f"faultd-{netns}.sock")
    return f"unix:{path}" if os.path.exists(path) else DEFAULT_TCP


def _grpc_target(addr):
    if addr.startswith("/"):
        return f"unix:{addr}"
    return addr


def _choice(table, value, field, what):
    key = value.replace("_", "-") if isinstance(value, str) else value
    if key not in table:
        names = ", ".join(str(k) for k in table if k is not None)
        raise InvalidArgument(f"{field}: {value!r} is not {what} ({names})")
    return table[key]


def _seconds(value, field):
    """Seconds (int/float) or a timedelta, as float seconds."""
    if isinstance(value, datetime.timedelta):
        value = value.total_seconds()
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise InvalidArgument(f"{field}: {value!r} is not a duration in seconds")
    return float(value)


def _millis(value, field):
    return int(round(_seconds(value, field) * 1000))


def _micros(value, field):
    return int(round(_seconds(value, field) * 1_000_000))


class Fault:
    """A fault faultd installed; a context manager that removes it on exit.

    ``proto`` is faultd's ``faultd.v1.Fault`` message."""

    def __init__(self, client, proto):
        self._client = client
        self.proto = proto

    id = property(lambda self: self.proto.id)
    session_id = property(lambda self: self.proto.session_id)
    port = property(lambda self: self.proto.spec.target.port)
    label = property(lambda self: self.proto.spec.label)

    @property
    def action(self):
        """The action's name: "drop", "limit_bytes", …"""
        return self.proto.spec.action.WhichOneof("kind")

    def remove(self, missing_ok=True):
        """Removes the fault; False when it was gone already (expired, cleared)."""
        return self._client.remove(self.id, missing_ok=missing_ok)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.remove()
        return False

    def __repr__(self):
        return f"<faultd.Fault id={self.id} {self.action} port={self.port}>"


class _Session:
    """An open OpenSession stream; a daemon thread holds it and notices its end."""

    def __init__(self, stub, name, timeout):
        self.id = 0
        self.error = None
        self._ready = threading.Event()
        self.ended = threading.Event()
        self._call = stub.OpenSession(pb.OpenSessionRequest(name=name))
        self._thread = threading.Thread(target=self._hold, name="faultd-session", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            self._call.cancel()
            raise Unavailable(f"faultd opened no session within {timeout} s")
        if self.error is not None:
            raise self.error

    def _hold(self):
        try:
            for event in self._call:
                if not self.id:
                    self.id = event.session_id
                    self._ready.set()
        except grpc.RpcError as e:
            if not self.id:
                self.error = from_rpc_error(e)
        finally:
            self.ended.set()
            self._ready.set()

    def alive(self):
        return bool(self.id) and not self.ended.is_set()

    def close(self):
        self._call.cancel()
        self._thread.join(timeout=5)


class Client:
    """A connection to faultd.

    ``addr``: ``host:port``, ``unix:/path`` or a socket path; default
    :func:`default_address`. With ``session=True`` (the default) every fault is bound to
    this client's session and dies with the process; ``session=False`` adds faults that
    stay until removed (or their ``ttl``)."""

    def __init__(self, addr=None, *, session=True, name=None, timeout=10.0):
        self.addr = addr or default_address()
        self.timeout = timeout
        self._use_session = session
        self._name = name or f"{os.path.basename(sys.argv[0] or 'python')} pid {os.getpid()}"
        target = _grpc_target(self.addr)
        # gRPC's default :authority for a Unix socket is its path, which faultd's HTTP/2
        # server rejects (PROTOCOL_ERROR); name the local host instead.
        options = [("grpc.default_authority", "localhost")] if target.startswith("unix:") else []
        self._channel = grpc.insecure_channel(target, options=options)
        self._stub = pb_grpc.FaultServiceStub(self._channel)
        self._lock = threading.Lock()
        self._session = None

    # --- plumbing ---------------------------------------------------------------------

    def _call(self, method, request):
        try:
            return getattr(self._stub, method)(request, timeout=self.timeout)
        except grpc.RpcError as e:
            raise from_rpc_error(e, self.addr) from None

    @property
    def session_id(self):
        """This client's session (opened now if needed); 0 when sessions are off."""
        if not self._use_session:
            return 0
        with self._lock:
            if self._session is None or not self._session.alive():
                # A session that ended (faultd restarted) took its faults; start afresh.
                self._session = _Session(self._stub, self._name, self.timeout)
            return self._session.id

    def close(self):
        """Ends the session (faultd removes its faults) and closes the connection."""
        with self._lock:
            if self._session is not None:
                self._session.close()
                self._session = None
        self._channel.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    # --- faults -----------------------------------------------------------------------

    def add(
        self,
        action,
        port,
        *,
        protocol="tcp",
        direction="both",
        peer="",
        port_end=None,
        remote_port=None,
        ttl=None,
        label="",
        session=None,
    ):
        """Adds a fault with a ``faultd.v1.Action``; the named methods below build it.

        ``port_end``: the last port of a range (``port`` through ``port_end``).
        ``remote_port``: a port tuple, only the flow whose other end is on that port.
        ``session``: None follows the client; False adds a fault that outlives it."""
        target = pb.Target(
            port=port,
            protocol=_choice(_PROTOCOLS, protocol, "target.protocol", "a protocol"),
            direction=_choice(_DIRECTIONS, direction, "target.direction", "a direction"),
            peer=peer or "",
            port_end=port_end or 0,
            remote_port=remote_port or 0,
        )
        return self._add_target(target, action, ttl, label, session)

    def partition(
        self,
        between,
        and_,
        *,
        mode="drop",
        one_way=False,
        protocol="any",
        ttl=None,
        label="partition",
        session=None,
    ):
        """Cuts every TCP and UDP packet between the address sets ``between`` and ``and_``
        (addresses or CIDRs, IPv4 or IPv6; a string or a list), any port, both ways unless
        ``one_way`` (then only from ``between`` to ``and_``). ``mode``: "drop" (packets
        vanish) or "reset" (TCP is answered with a RST, the rest vanishes)."""
        actions = {
            "drop": lambda: pb.Action(drop=pb.Drop()),
            "reset": lambda: pb.Action(reset=pb.Reset()),
        }
        action = _choice(actions, mode, "mode", "a partition mode")()
        target = pb.Target(
            protocol=_choice(_PROTOCOLS, protocol, "target.protocol", "a protocol"),
            between=[between] if isinstance(between, str) else list(between),
            and_peers=[and_] if isinstance(and_, str) else list(and_),
            one_way=bool(one_way),
        )
        return self._add_target(target, action, ttl, label, session)

    def _add_target(self, target, action, ttl, label, session):
        spec = pb.FaultSpec(target=target, action=action, label=label or "")
        if ttl is not None:
            spec.ttl_ms = _millis(ttl, "ttl_ms")
        bound = self._use_session if session is None else session
        request = pb.AddFaultRequest(spec=spec, session_id=self.session_id if bound else 0)
        return Fault(self, self._call("AddFault", request))

    def drop(self, port, probability=None, **target):
        """Packets vanish: no FIN, no RST. The connection resumes when lifted in time."""
        return self.add(pb.Action(drop=pb.Drop(probability=probability)), port, **target)

    def reset(self, port, probability=None, **target):
        """Each packet of a matching TCP flow is answered with a RST (ECONNRESET)."""
        return self.add(pb.Action(reset=pb.Reset(probability=probability)), port, **target)

    def refuse(self, port, mode="rst", **target):
        """New connections fail: ``rst`` ECONNREFUSED at once, ``drop`` a connect timeout."""
        mode = _choice(_REFUSE, mode, "action.refuse.mode", "a refuse mode")
        return self.add(pb.Action(refuse=pb.Refuse(mode=mode)), port, **target)

    def limit_bytes(self, port, bytes, then=None, **target):
        """Each flow dies (reset for TCP, drop for UDP) once its payload exceeds ``bytes``."""
        then = _choice(_THEN, then, "action.limit_bytes.then", "drop or reset")
        action = pb.Action(limit_bytes=pb.LimitBytes(bytes=bytes, then=then))
        return self.add(action, port, **target)

    def limit_age(self, port, after, then=None, **target):
        """Each flow dies once ``after`` seconds (or a timedelta) have passed."""
        then = _choice(_THEN, then, "action.limit_age.then", "drop or reset")
        after_ms = _millis(after, "action.limit_age.after_ms")
        action = pb.Action(limit_age=pb.LimitAge(after_ms=after_ms, then=then))
        return self.add(action, port, **target)

    def record(self, port, **target):
        """Nothing happens to packets; connection attempts become events."""
        return self.add(pb.Action(record=pb.Record()), port, **target)

    def loss(self, port, percent, **target):
        """A random share of matching packets vanish."""
        return self.add(pb.Action(loss=pb.Loss(percent=percent)), port, **target)

    def delay(self, port, latency, jitter=0, **target):
        """Packets leave ``latency`` seconds later (± ``jitter``); needs sch_fq."""
        delay = pb.Delay(
            latency_us=_micros(latency, "action.delay.latency_us"),
            jitter_us=_micros(jitter, "action.delay.jitter_us"),
        )
        return self.add(pb.Action(delay=delay), port, **target)

    def rate(self, port, bits_per_second, **target):
        """Matching traffic is held to a rate (paced where fq exists, else policed)."""
        rate = pb.Rate(bits_per_second=bits_per_second)
        return self.add(pb.Action(rate=rate), port, **target)

    def corrupt(self, port, percent=100.0, byte_percent=None, **target):
        """One payload byte of a share of packets is flipped (checksum kept valid); with
        ``byte_percent``, each payload byte of those packets changes with that probability."""
        corrupt = pb.Corrupt(percent=percent)
        if byte_percent is not None:
            corrupt.byte_percent = byte_percent
        return self.add(pb.Action(corrupt=corrupt), port, **target)

    def slice(self, port, bytes, delay=0, **target):
        """New TCP connections carry their stream in segments of at most ``bytes``
        [48, 65535], spaced ``delay`` seconds apart on the way out (needs sch_fq if > 0)."""
        action = pb.Slice(bytes=bytes, delay_us=_micros(delay, "action.slice.delay_us"))
        return self.add(pb.Action(slice=action), port, **target)

    def duplicate(self, port, percent=100.0, **target):
        """A share of matching packets is sent twice."""
        return self.add(pb.Action(duplicate=pb.Duplicate(percent=percent)), port, **target)

    def stall(self, port, **target):
        """Advertised TCP windows rewritten to 0: the sender looks like it stopped reading."""
        return self.add(pb.Action(stall=pb.Stall()), port, **target)

    # --- the rest of the API ----------------------------------------------------------

    def list(self):
        """The active faults, as :class:`Fault` handles."""
        faults = self._call("ListFaults", pb.ListFaultsRequest()).faults
        return [Fault(self, f) for f in faults]

    def remove(self, fault, missing_ok=False):
        """Removes a fault (a :class:`Fault` or an id); returns False when ``missing_ok``
        and it was not there."""
        from faultd.errors import NotFound

        fault_id = fault.id if isinstance(fault, Fault) else int(fault)
        try:
            self._call("RemoveFault", pb.RemoveFaultRequest(id=fault_id))
            return True
        except NotFound:
            if missing_ok:
                return False
            raise

    def clear(self, label=None, owner_uid=None, mine=False):
        """Removes every fault, or those with this label / owner; returns how many."""
        request = pb.ClearFaultsRequest(label=label, owner_uid=owner_uid, mine=mine)
        return self._call("ClearFaults", request).removed

    def stats(self):
        """``faultd.v1.GetStatsResponse``: every fault with its counters, attachments."""
        return self._call("GetStats", pb.GetStatsRequest())

    def capabilities(self):
        return self._call("GetCapabilities", pb.GetCapabilitiesRequest())

    def events(self, follow=False, fault_id=0, timeout=None):
        """Kernel events (``faultd.v1.Event``): the history, then new ones with ``follow``."""
        request = pb.WatchEventsRequest(follow=follow, fault_id=fault_id)
        try:
            yield from self._stub.WatchEvents(request, timeout=timeout)
        except grpc.RpcError as e:
            if e.code() == grpc.StatusCode.DEADLINE_EXCEEDED and follow:
                return
            raise from_rpc_error(e, self.addr) from None

