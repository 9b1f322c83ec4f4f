"""faultd's Python client and pytest plugin against a real faultd (see conftest.py)."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

import faultd
from faultd import Client, InvalidArgument, NotFound, Refused, Unavailable
from conftest import receives, receives_exactly, tcp_pair


def test_drop_silences_a_connection_that_resumes_when_lifted(ns, faultd, observer):
    client, server = ns.run(tcp_pair, 7101)
    other_c, other_s = ns.run(tcp_pair, 7102)
    with client, server, other_c, other_s:
        client.sendall(b"before")
        assert receives_exactly(server, b"before", 5) == b"before"

        fault = faultd.drop(7101)
        assert fault.action == "drop" and fault.port == 7101
        client.sendall(b"held")
        assert receives(server, 1.5) == b"", "nothing arrives while dropped"
        other_c.sendall(b"other port")
        assert receives_exactly(other_s, b"other port", 5) == b"other port"

        fault.remove()
        assert [f.id for f in observer.list()] == []
        # TCP retransmits on the very same connection.
        assert receives_exactly(server, b"held", 15) == b"held"


def test_the_context_manager_removes_its_fault(ns, faultd, observer):
    client, server = ns.run(tcp_pair, 7103)
    with client, server:
        with faultd.drop(7103, direction="to-port", label="cm") as fault:
            listed = observer.list()
            assert [(f.id, f.label) for f in listed] == [(fault.id, "cm")]
            assert listed[0].session_id == faultd.session_id != 0
            client.sendall(b"x")
            assert receives(server, 1.0) == b""
        assert observer.list() == []
        assert receives_exactly(server, b"x", 15) == b"x"


def test_module_level_shortcuts_use_faultd_addr(daemon, observer, monkeypatch):
    monkeypatch.setenv("FAULTD_ADDR", daemon.addr)
    monkeypatch.setattr(faultd, "_default", None)
    try:
        with faultd.refuse(7104, label="module") as fault:
            assert [f.id for f in observer.list()] == [fault.id]
            assert faultd.default_client().addr == daemon.addr
        assert observer.list() == []
    finally:
        faultd.default_client().close()


def test_errors_are_mapped_with_faultd_s_message(daemon, faultd, observer):
    with pytest.raises(InvalidArgument, match="target.port"):
        faultd.drop(0)
    with pytest.raises(InvalidArgument, match="action.loss.percent"):
        faultd.loss(7105, 250)
    with pytest.raises(InvalidArgument, match="target.direction"):
        faultd.drop(7105, direction="sideways")
    with pytest.raises(NotFound, match="no fault with id 999999"):
        faultd.remove(999999)
    # faultd's own API port (loopback TCP 7447 in the namespace) may not be faulted.
    with pytest.raises(Refused):
        faultd.drop(7447)
    with Client(daemon.addr, session=False) as raw:
        from faultd.v1 import faultd_pb2 as pb

        spec = pb.FaultSpec(
            target=pb.Target(port=7105), action=pb.Action(drop=pb.Drop())
        )
        with pytest.raises(Refused, match="session_id"):
            raw._call("AddFault", pb.AddFaultRequest(spec=spec, session_id=10**9))
    with pytest.raises(Unavailable):
        Client("unix:/nonexistent/faultd.sock", session=False, timeout=2).list()
    assert observer.list() == [], "failed calls change nothing"


def test_gates_map_userver_conditions_to_directions(ns, faultd, observer):
    gate = faultd.gate(7106)
    client, server = ns.run(tcp_pair, 7106)
    with client, server:
        gate.to_server_drop()
        client.sendall(b"to server")
        server.sendall(b"to client")
        assert receives(server, 1.0) == b"", "to_server_drop silences client -> server"
        assert receives_exactly(client, b"to client", 5) == b"to client"
        gate.to_server_corrupt_data()  # replaces the drop
        gate.to_client_limit_bytes(100)
        faults = {f.proto.spec.target.direction: f.action for f in observer.list()}
        from faultd.v1 import faultd_pb2 as pb

        assert faults == {
            pb.DIRECTION_TO_PORT: "corrupt",
            pb.DIRECTION_FROM_PORT: "limit_bytes",
        }
        gate.to_server_pass()
        gate.to_client_pass()
        assert observer.list() == []


INNER = textwrap.dedent(
    """
    import pytest

    def test_fails_on_purpose(faultd, faultd_client):
        faultd.drop(7201, label="inner")
        faultd_client.drop(7202, label="inner")  # through the client itself, too
        assert False, "on purpose"

    def test_after_the_failure_nothing_is_left(faultd):
        assert [f.id for f in faultd.list()] == []
    """
)


def test_a_test_that_fails_still_leaves_no_fault(tmp_path, daemon, observer):
    (tmp_path / "test_inner.py").write_text(INNER)
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q",
         f"--faultd-addr={daemon.addr}", str(tmp_path / "test_inner.py")],
        capture_output=True, text=True, cwd=tmp_path, timeout=120,
    )
    assert run.returncode == 1, run.stdout + run.stderr
    assert "1 failed, 1 passed" in run.stdout, run.stdout
    assert "on purpose" in run.stdout
    assert observer.list() == []


HOLDER = textwrap.dedent(
    """
    import sys, time, faultd
    client = faultd.Client(sys.argv[1], name="holder")
    client.drop(7301)
    client.drop(7302, protocol="udp")
    print(client.session_id, flush=True)
    time.sleep(600)
    """
)


def test_sigkill_of_the_holder_removes_its_faults_within_a_second(ns, daemon, observer):
    client, server = ns.run(tcp_pair, 7301)
    # A fault of no session: it stays.
    keeper = observer.drop(7303, label="keeper")
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, daemon.addr], stdout=subprocess.PIPE, text=True
    )
    try:
        session = int(holder.stdout.readline())
        assert session != 0
        held = [f for f in observer.list() if f.session_id == session]
        assert sorted(f.port for f in held) == [7301, 7302]
        client.sendall(b"while held")
        assert receives(server, 1.0) == b""

        holder.send_signal(signal.SIGKILL)
        killed = time.monotonic()
        holder.wait()
        # A generous deadline for the wait; the teardown time is a figure (cargo xtask bench).
        while any(f.session_id == session for f in observer.list()):
            assert time.monotonic() - killed < 60, "session faults outlived the holder by 60 s"
            time.sleep(0.01)
        elapsed = time.monotonic() - killed
        print(f"MEASURE session faults gone {elapsed * 1000:.0f} ms after SIGKILL")
        assert [f.id for f in observer.list()] == [keeper.id], "the session-less fault stays"
        # The kernel no longer acts: the held data arrives.
        assert receives_exactly(server, b"while held", 15) == b"while held"
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
        keeper.remove()
        client.close()
        server.close()


def test_faultd_start_runs_a_daemon_for_the_session(tmp_path, request):
    """The plugin's own --faultd-start, in a namespace of its own."""
    from conftest import Netns

    binary = request.config.getoption("--faultd-bin")
    if os.geteuid() != 0 or not binary:
        pytest.skip("SKIP: needs root and --faultd-bin")
    (tmp_path / "test_started.py").write_text(
        "def test_it(faultd):\n"
        "    with faultd.drop(7401) as f:\n"
        "        assert [x.id for x in faultd.list()] == [f.id]\n"
    )
    ns = Netns(f"fdpy-start-{os.getpid()}")
    try:
        run = ns.exec(
            [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q",
             "--faultd-start=lo", f"--faultd-bin={binary}", str(tmp_path / "test_started.py")],
            capture_output=True, text=True, cwd=tmp_path, timeout=120,
        )
    finally:
        ns.close()
    assert run.returncode == 0, run.stdout + run.stderr
    assert "1 passed" in run.stdout


def test_slice_and_byte_corruption_reach_the_application(ns, faultd, observer):
    with faultd.slice(7130, 100) as fault:
        assert fault.action == "slice"
        assert fault.proto.spec.action.slice.bytes == 100
        client, server = ns.run(tcp_pair, 7130)  # opened after the fault: sliced
        with client, server:
            data = bytes(i % 251 for i in range(20000))
            client.sendall(data)
            got, reads = b"", 0
            while len(got) < len(data):
                chunk = receives(server, 5)
                assert chunk, f"stalled after {len(got)} bytes"
                got, reads = got + chunk, reads + 1
            assert got == data
            assert reads >= 20, f"{reads} reads: not sliced"
    with pytest.raises(InvalidArgument, match="action.slice.bytes"):
        faultd.slice(7130, 47)
    with pytest.raises(InvalidArgument, match="target.protocol"):
        faultd.slice(7130, 100, protocol="udp")
    with pytest.raises(InvalidArgument, match="action.corrupt.byte_percent"):
        faultd.corrupt(7131, byte_percent=0)
    with faultd.corrupt(7131, byte_percent=1) as fault:
        assert fault.proto.spec.action.corrupt.byte_percent == 1
        client, server = ns.run(tcp_pair, 7131)
        with client, server:
            data = bytes(i % 251 for i in range(102400))
            client.sendall(data)
            got = receives_exactly(server, data, 10)
            assert len(got) == len(data)
            changed = sum(a != b for a, b in zip(got, data))
            assert abs(changed - 1024) <= 6 * (1024 * 0.99) ** 0.5, changed
    assert observer.list() == []


def _udp_arrives(src, dst, port):
    """Whether a datagram from ``src`` reaches a socket bound on ``dst:port``."""
    import socket

    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        receiver.bind((dst, port))
        receiver.settimeout(0.5)
        sender.bind((src, 0))
        sender.sendto(b"x", (dst, port))
        try:
            return receiver.recv(16) == b"x"
        except socket.timeout:
            return False
    finally:
        receiver.close()
        sender.close()


def test_partitions_cut_address_pairs_and_ranges_their_ports(ns, faultd, observer):
    assert ns.run(_udp_arrives, "127.0.0.2", "127.0.0.3", 7111)
    with faultd.partition("127.0.0.2", ["127.0.0.3"], one_way=True) as fault:
        [listed] = observer.list()
        assert listed.id == fault.id
        assert list(listed.proto.spec.target.between) == ["127.0.0.2/32"]
        assert listed.proto.spec.target.one_way
        assert not ns.run(_udp_arrives, "127.0.0.2", "127.0.0.3", 7111)
        assert ns.run(_udp_arrives, "127.0.0.3", "127.0.0.2", 7112), "one way only"
        assert ns.run(_udp_arrives, "127.0.0.2", "127.0.0.4", 7113), "not in --and"
    assert ns.run(_udp_arrives, "127.0.0.2", "127.0.0.3", 7111)
    with faultd.drop(7120, port_end=7122, protocol="udp"):
        for port in (7120, 7121, 7122):
            assert not ns.run(_udp_arrives, "127.0.0.1", "127.0.0.1", port)
        assert ns.run(_udp_arrives, "127.0.0.1", "127.0.0.1", 7123)
    with pytest.raises(InvalidArgument, match="target.and_peers"):
        faultd.partition("10.0.0.0/8", "10.1.2.3")
    with pytest.raises(InvalidArgument, match="mode"):
        faultd.partition("10.0.0.1", "10.0.0.2", mode="explode")
