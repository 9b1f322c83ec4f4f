"""The matrix: each client (grpcio with raw stubs, grpcio through reflection alone,
grpcio's health client, faultd's Python client, Node's @grpc/grpc-js) over each transport
(TCP to 127.0.0.1, TCP to ::1, the Unix socket), as root and as nobody. See conftest.py."""

import os
import select
import signal
import subprocess
import sys
import time

import pytest

from conftest import HERE, NOBODY

TRANSPORTS = {
    # grpcio (gRPC's C core) connects to 127.0.0.1 from a dual-stack IPv6 socket with
    # v4-mapped addresses; Node from an IPv4 one.
    "tcp-127.0.0.1": ("daemon_v4", lambda d: "127.0.0.1:7447"),
    "tcp-[::1]": ("daemon_v6", lambda d: "[::1]:7447"),
    "unix": ("daemon_v4", lambda d: f"unix:{d.sock}"),
}

# Each client program, and the first of the ports its cases use (one per transport).
CLIENTS = {
    "grpcio-raw-stubs": ("python", "py_raw.py", 7900),
    "grpcio-reflection": ("python", "py_reflection.py", 7910),
    "grpcio-health": ("python", "py_health.py", None),
    "faultd-python-client": ("python", "py_client.py", 7920),
    "node-grpc-js": ("node", "node/client.js", 7930),
}


def port_of(client, transport):
    base = CLIENTS[client][2]
    return None if base is None else base + list(TRANSPORTS).index(transport)


def run_client(request, client, transport, user=None):
    """Runs one client program inside the transport's faultd's namespace."""
    fixture, address = TRANSPORTS[transport]
    daemon = request.getfixturevalue(fixture)
    language, program, _ = CLIENTS[client]
    env = {k: v for k, v in os.environ.items() if k != "FAULTD_ADDR"}
    if language == "node":
        env["NODE_PATH"] = request.getfixturevalue("node_modules")
        argv = ["node", os.path.join(HERE, program)]
    else:
        if client == "grpcio-raw-stubs":
            env["PYTHONPATH"] = request.getfixturevalue("raw_stubs")
        argv = [sys.executable, os.path.join(HERE, program)]
    argv.append(address(daemon))
    port = port_of(client, transport)
    if port is not None:
        argv.append(str(port))
    return daemon.ns.exec(argv, user=user, env=env, capture_output=True, text=True,
                          timeout=120)


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("client", CLIENTS)
def test_root_is_admitted_and_its_fault_acts(request, client, transport):
    out = run_client(request, client, transport)
    assert out.returncode == 0, f"exit {out.returncode}\n{out.stdout}\n{out.stderr}"
    assert out.stdout.strip().endswith("ok"), out.stdout


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("client", CLIENTS)
def test_nobody_is_refused_with_the_flag_that_admits_them(request, client, transport):
    out = run_client(request, client, transport, user=NOBODY)
    assert out.returncode == 3, f"exit {out.returncode}\n{out.stdout}\n{out.stderr}"
    assert f"permission denied: uid {NOBODY} (nobody) may not steer this faultd" in out.stderr
    assert f"restart faultd with --allow-uid {NOBODY}" in out.stderr, out.stderr


def probe(daemon, port):
    out = daemon.ns.exec([sys.executable, os.path.join(HERE, "probe.py"), str(port)],
                         capture_output=True, text=True, timeout=60, check=True)
    return out.stdout.strip()


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_node_session_faults_die_with_the_process(request, transport):
    fixture, address = TRANSPORTS[transport]
    daemon = request.getfixturevalue(fixture)
    env = {k: v for k, v in os.environ.items() if k != "FAULTD_ADDR"}
    env["NODE_PATH"] = request.getfixturevalue("node_modules")
    port = 7940 + list(TRANSPORTS).index(transport)
    # ip netns exec execs node: the process's PID is node's.
    node = subprocess.Popen(
        daemon.ns.argv(["node", os.path.join(HERE, "node/session.js"), address(daemon),
                        str(port)]),
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        ready, _, _ = select.select([node.stdout], [], [], 60)
        line = node.stdout.readline() if ready else ""
        assert line.startswith("ready "), f"node: {line!r}\n{node.stderr.read() if node.poll() is not None else ''}"
        assert probe(daemon, port) == "refused", "the session's fault does not act"
        os.kill(node.pid, signal.SIGKILL)
        node.wait(timeout=10)
        deadline = time.monotonic() + 15
        while probe(daemon, port) != "accepted":
            assert time.monotonic() < deadline, "the fault outlived the killed node process"
            time.sleep(0.1)
    finally:
        if node.poll() is None:
            node.kill()
            node.wait()
