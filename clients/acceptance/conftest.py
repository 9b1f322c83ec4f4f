"""The cross-language acceptance matrix: real gRPC clients in other languages and stacks
against a real faultd, over loopback TCP (127.0.0.1 and ::1) and the Unix socket, as root
(admitted: each case adds a fault and sees it act on traffic) and as the unprivileged user
nobody (refused, with the message naming the flag that would admit them).

Two faultds, each in a network namespace of its own attached to its lo: one listening on
127.0.0.1:7447 (the default) and one on [::1]:7447, each with a Unix socket in a temporary
directory. The socket is made reachable to nobody (0666 in a 0755 directory) so that what
refuses them is faultd's check, not the file's mode. Client programs run whole inside the
namespace (``ip netns exec``; grpcio's threads and sockets with them), as nobody through
``setpriv``. Everything is removed at the end of the session, whatever happens; processes
are stopped by their PID.

Options: ``--faultd-bin`` (the faultd plugin's), ``--node-modules DIR`` (where
@grpc/grpc-js and @grpc/proto-loader are installed; the Node cases are skipped, with the
reason, without it).
"""

import os
import shutil
import subprocess
import sys
import tempfile
import time

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
NOBODY = 65534


def pytest_addoption(parser):
    parser.addoption("--node-modules", default=os.environ.get("FAULTD_NODE_MODULES"),
                     help="node_modules with @grpc/grpc-js and @grpc/proto-loader")


class Netns:
    """A network namespace with lo up; removed by close()."""

    def __init__(self, name):
        self.name = name
        subprocess.run(["ip", "netns", "add", name], check=True)
        try:
            self.exec(["ip", "link", "set", "lo", "up"], check=True)
        except Exception:
            self.close()
            raise

    def argv(self, argv, user=None):
        prefix = ["ip", "netns", "exec", self.name]
        if user is not None:
            prefix += ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups"]
        return prefix + list(argv)

    def exec(self, argv, user=None, **kwargs):
        return subprocess.run(self.argv(argv, user), **kwargs)

    def close(self):
        subprocess.run(["ip", "netns", "del", self.name], check=False)


class Daemon:
    """faultd on a namespace's lo, listening on `listen` and on a socket of its own."""

    def __init__(self, ns, binary, listen):
        self.ns = ns
        self.listen = listen
        self.dir = tempfile.mkdtemp(prefix="faultd-acc-")
        os.chmod(self.dir, 0o755)
        self.sock = os.path.join(self.dir, "faultd.sock")
        self.log = os.path.join(self.dir, "faultd.log")
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(
                ns.argv([binary, "--iface", "lo", "--socket", self.sock, "--listen", listen]),
                stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                env={**os.environ, "NO_COLOR": "1"},
            )
        deadline = time.monotonic() + 60
        while b"faultd ready" not in open(self.log, "rb").read():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"faultd did not start:\n{self.text()}")
            time.sleep(0.05)
        # Reachable by anyone, so that faultd's own check is what refuses (see above).
        os.chmod(self.sock, 0o666)

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
        shutil.rmtree(self.dir, ignore_errors=True)


def _daemon(request, tag, listen):
    binary = request.config.getoption("--faultd-bin")
    if os.geteuid() != 0:
        pytest.skip("SKIP: not root; the matrix loads eBPF programs and creates namespaces")
    if not binary or not os.access(binary, os.X_OK):
        pytest.skip("SKIP: no faultd binary; give --faultd-bin PATH or FAULTD_BIN")
    ns = Netns(f"fdacc{tag}-{os.getpid()}")
    try:
        daemon = Daemon(ns, os.path.abspath(binary), listen)
        try:
            yield daemon
        finally:
            daemon.stop()
    finally:
        ns.close()


@pytest.fixture(scope="session")
def daemon_v4(request):
    yield from _daemon(request, "4", "127.0.0.1:7447")


@pytest.fixture(scope="session")
def daemon_v6(request):
    yield from _daemon(request, "6", "[::1]:7447")


@pytest.fixture(scope="session")
def raw_stubs():
    """Stubs generated from proto/ by grpcio-tools, as an application would make them, in
    target/acceptance-stubs (readable by nobody, unlike pytest's temporary directories),
    which goes first on the client programs' PYTHONPATH; with __init__.py files, so that its
    `faultd` package wins over the installed client's."""
    out = os.path.join(ROOT, "target", "acceptance-stubs")
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)
    subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", f"-I{ROOT}/proto",
         f"--python_out={out}", f"--grpc_python_out={out}",
         f"{ROOT}/proto/faultd/v1/faultd.proto"],
        check=True,
    )
    for package in ["faultd", "faultd/v1"]:
        open(os.path.join(out, package, "__init__.py"), "w").close()
    return out


@pytest.fixture(scope="session")
def node_modules(request):
    modules = request.config.getoption("--node-modules")
    if not modules or not os.path.isdir(os.path.join(modules, "@grpc", "grpc-js")):
        pytest.skip("SKIP: no @grpc/grpc-js; give --node-modules DIR (cargo xtask python-test "
                    "installs it under target/)")
    if not shutil.which("node"):
        pytest.skip("SKIP: node is not installed")
    return modules
