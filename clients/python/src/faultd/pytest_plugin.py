"""pytest fixtures for faultd, registered by the ``pytest11`` entry point.

- ``faultd_client`` (session): a :class:`faultd.Client` connected to faultd. With
  ``--faultd-start IFACE`` (or ``FAULTD_START``) the session first starts a faultd on IFACE,
  when permitted: as root, with the binary ``--faultd-bin`` (or ``FAULTD_BIN``, or
  ``faultd`` on PATH); otherwise the tests that use it are skipped, with the reason.
  That faultd is then the default address of the whole session
  (:func:`faultd.set_default_address`, and ``FAULTD_ADDR`` for the processes tests start):
  the module-level functions (``with faultd.limit_bytes(...)``) and every
  ``faultd.Client()`` made without an address reach it, with no ``FAULTD_ADDR`` to set.
- ``faultd_address`` (session): the address ``faultd_client`` uses.
- ``faultd`` (function): the client for one test; whatever that test added is removed when
  it ends, passed or failed. ``faultd.gate(port)`` gives userver-style conditions.
"""

import os
import shutil
import signal
import subprocess
import tempfile
import time

import pytest

import faultd as _faultd
from faultd.gate import Gate


def pytest_addoption(parser):
    group = parser.getgroup("faultd")
    group.addoption("--faultd-addr", default=os.environ.get("FAULTD_ADDR"),
                    help="faultd's address (host:port or unix:/path); default: its socket "
                         "in this network namespace, else 127.0.0.1:7447")
    group.addoption("--faultd-start", metavar="IFACE", default=os.environ.get("FAULTD_START"),
                    help="start a faultd attached to IFACE for this session (root only)")
    group.addoption("--faultd-bin", default=os.environ.get("FAULTD_BIN"),
                    help="the faultd binary --faultd-start runs (default: faultd on PATH)")


class _Daemon:
    """A faultd this session started; stopped by its PID."""

    def __init__(self, binary, iface):
        self.log = tempfile.NamedTemporaryFile(prefix="faultd-", suffix=".log", delete=False)
        self.sock = os.path.join(tempfile.mkdtemp(prefix="faultd-"), "faultd.sock")
        self.addr = f"unix:{self.sock}"
        self.process = subprocess.Popen(
            [binary, "--iface", iface, "--socket", self.sock],
            stdin=subprocess.DEVNULL, stdout=self.log, stderr=self.log,
            env={**os.environ, "NO_COLOR": "1"},
        )

    def wait_ready(self, within=30.0):
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"faultd exited ({self.process.returncode}):\n{self.text()}")
            if b"faultd ready" in open(self.log.name, "rb").read():
                return
            time.sleep(0.05)
        raise RuntimeError(f"faultd was not ready within {within} s:\n{self.text()}")

    def text(self):
        return open(self.log.name, errors="replace").read()

    def stop(self):
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        os.unlink(self.log.name)


def _start_daemon(config, iface):
    """The started faultd, or the reason it cannot be started (a str)."""
    binary = config.getoption("--faultd-bin") or shutil.which("faultd")
    if os.geteuid() != 0:
        return f"--faultd-start {iface}: starting faultd needs root (euid {os.geteuid()})"
    if not binary or not os.access(binary, os.X_OK):
        return f"--faultd-start {iface}: no faultd binary (give --faultd-bin or FAULTD_BIN)"
    daemon = _Daemon(binary, iface)
    try:
        daemon.wait_ready()
    except Exception:
        daemon.stop()
        raise
    return daemon


@pytest.fixture(scope="session", autouse=True)
def _faultd_started(request):
    """With --faultd-start: the faultd this session started (or why it could not be), made
    the session's default address before any test runs, so that code which never sees a
    fixture (the module-level functions, a ``faultd.Client()`` deep in a helper) reaches it.
    Stopped, and the default put back, when the session ends."""
    iface = request.config.getoption("--faultd-start")
    if not iface:
        yield None
        return
    daemon = _start_daemon(request.config, iface)
    if isinstance(daemon, str):
        yield daemon
        return
    previous = os.environ.get("FAULTD_ADDR")
    _faultd.set_default_address(daemon.addr)
    os.environ["FAULTD_ADDR"] = daemon.addr  # for the processes tests start
    try:
        yield daemon
    finally:
        if previous is None:
            os.environ.pop("FAULTD_ADDR", None)
        else:
            os.environ["FAULTD_ADDR"] = previous
        _faultd.set_default_address(None)  # closes the shortcuts' client first
        daemon.stop()


@pytest.fixture(scope="session")
def faultd_address(request, _faultd_started):
    """faultd's address for this session: the started one's with --faultd-start, else
    --faultd-addr, else :func:`faultd.default_address`."""
    if isinstance(_faultd_started, str):
        pytest.skip(_faultd_started)
    if _faultd_started is not None:
        return _faultd_started.addr
    return request.config.getoption("--faultd-addr") or _faultd.default_address()


@pytest.fixture(scope="session")
def faultd_client(faultd_address):
    """A faultd client for the whole session; its faults die with the session."""
    client = _faultd.Client(faultd_address, name=f"pytest pid {os.getpid()}")
    try:
        client.list()  # fail here, clearly, when faultd is not reachable
        yield client
    finally:
        client.close()


class TestFaults:
    """The ``faultd`` fixture: the client's methods, and cleanup of what this test added."""

    __test__ = False  # not a test class, for pytest's collector

    def __init__(self, client):
        self.client = client
        self._gates = []
        self._before = self._session_faults()

    def _session_faults(self):
        session = self.client.session_id
        return {f.id for f in self.client.list() if session and f.session_id == session}

    def __getattr__(self, name):
        return getattr(self.client, name)

    def gate(self, port, protocol="tcp", peer=""):
        """userver's TcpGate/UdpGate conditions on ``port`` (see faultd.gate)."""
        gate = Gate(self.client, port, protocol=protocol, peer=peer)
        self._gates.append(gate)
        return gate

    def cleanup(self):
        """Removes every fault of the session that this test added."""
        for fault_id in self._session_faults() - self._before:
            self.client.remove(fault_id, missing_ok=True)


@pytest.fixture
def faultd(faultd_client):
    """faultd for one test; what it added is removed afterwards, even when it fails."""
    faults = TestFaults(faultd_client)
    try:
        yield faults
    finally:
        faults.cleanup()
