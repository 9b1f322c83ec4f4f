"""The package's own tests run against a real faultd, attached to `lo` inside a network
namespace this session creates (and deletes, whatever happens). The tests' own sockets
are made in that namespace by a thread that joined it (setns), so no traffic leaves it.

Needs root and a faultd binary: ``pytest --faultd-bin target/debug/faultd`` (or
FAULTD_BIN); without them every test is skipped, with the reason."""

import contextlib
import ctypes
import os
import socket
import subprocess
import tempfile
import threading
import time

import pytest

import faultd

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


class Netns:
    """A network namespace with `lo` up; deleted by close()."""

    def __init__(self, name):
        self.name = name
        subprocess.run(["ip", "netns", "add", name], check=True)
        try:
            self.exec(["ip", "link", "set", "lo", "up"], check=True)
        except Exception:
            self.close()
            raise

    def exec(self, argv, **kwargs):
        return subprocess.run(["ip", "netns", "exec", self.name, *argv], **kwargs)

    def popen(self, argv, **kwargs):
        return subprocess.Popen(["ip", "netns", "exec", self.name, *argv], **kwargs)

    def run(self, fn, *args):
        """fn(*args) on a thread inside the namespace; sockets it makes stay there."""
        result = {}

        def inside():
            try:
                with open(f"/run/netns/{self.name}") as ns:
                    if _libc.setns(ns.fileno(), CLONE_NEWNET) != 0:
                        raise OSError(ctypes.get_errno(), "setns")
                result["value"] = fn(*args)
            except BaseException as e:  # re-raised on the caller's thread
                result["error"] = e

        thread = threading.Thread(target=inside)
        thread.start()
        thread.join()
        if "error" in result:
            raise result["error"]
        return result["value"]

    def close(self):
        subprocess.run(["ip", "netns", "del", self.name], check=False)


class Daemon:
    """faultd on the namespace's lo, serving a Unix socket of its own; stopped by PID."""

    def __init__(self, ns, binary):
        self.dir = tempfile.mkdtemp(prefix="faultd-py-")
        self.sock = os.path.join(self.dir, "faultd.sock")
        self.addr = f"unix:{self.sock}"
        self.log = os.path.join(self.dir, "faultd.log")
        with open(self.log, "wb") as log:
            self.process = ns.popen(
                [binary, "--iface", "lo", "--socket", self.sock],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                env={**os.environ, "NO_COLOR": "1", "RUST_LOG": "info"},
            )
        deadline = time.monotonic() + 30
        while b"faultd ready" not in open(self.log, "rb").read():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"faultd did not start:\n{self.text()}")
            time.sleep(0.05)

    def text(self):
        return open(self.log, errors="replace").read()

    def stop(self):
        if self.process.poll() is None:
            self.process.terminate()  # by PID: ip netns exec execs faultd
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@pytest.fixture(scope="session")
def netns_daemon(request):
    binary = request.config.getoption("--faultd-bin")
    if os.geteuid() != 0:
        pytest.skip("SKIP: not root; these tests load eBPF programs and create namespaces")
    if not binary or not os.access(binary, os.X_OK):
        pytest.skip("SKIP: no faultd binary; give --faultd-bin PATH or FAULTD_BIN")
    ns = Netns(f"fdpy-{os.getpid()}")
    try:
        daemon = Daemon(ns, binary)
        try:
            yield ns, daemon
        finally:
            daemon.stop()
    finally:
        ns.close()


@pytest.fixture(scope="session")
def ns(netns_daemon):
    return netns_daemon[0]


@pytest.fixture(scope="session")
def daemon(netns_daemon):
    return netns_daemon[1]


@pytest.fixture(scope="session")
def faultd_client(daemon):
    """Overrides the plugin's: the client of this session's own faultd."""
    with faultd.Client(daemon.addr, name="faultd's python tests") as client:
        yield client


@pytest.fixture
def observer(daemon):
    """A second client without a session: sees what faultd holds, adds nothing."""
    with faultd.Client(daemon.addr, session=False) as client:
        yield client


def tcp_pair(port):
    """A connected (client, server) pair on 127.0.0.1:port in the calling namespace."""
    with contextlib.closing(socket.socket()) as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", port))
        listener.listen(1)
        client = socket.create_connection(("127.0.0.1", port))
        server, _ = listener.accept()
    return client, server


def receives(sock, within):
    """The bytes that arrive within `within` seconds; b"" when none did."""
    sock.settimeout(within)
    try:
        return sock.recv(65536)
    except socket.timeout:
        return b""


def receives_exactly(sock, data, within):
    deadline = time.monotonic() + within
    got = b""
    while len(got) < len(data) and time.monotonic() < deadline:
        got += receives(sock, max(0.05, deadline - time.monotonic()))
    return got
