"""The pytest plugin's --faultd-start: the faultd it starts is the session's default, so
the module-level functions and any ``faultd.Client()`` reach it without FAULTD_ADDR.

Runs pytest on a small suite in a subprocess, inside a network namespace of its own (the
plugin's faultd attaches to that namespace's lo and listens on its 127.0.0.1:7447), with
FAULTD_ADDR unset."""

import os
import subprocess
import sys
import textwrap

import pytest

from conftest import Netns

INNER = textwrap.dedent('''
    import socket

    import pytest

    import faultd


    def pair(listener, port):
        client = socket.create_connection(("127.0.0.1", port), timeout=10)
        server, _ = listener.accept()
        server.settimeout(10)
        return client, server


    def test_the_started_faultd_is_everyones_default(faultd_address):
        assert faultd_address.startswith("unix:"), faultd_address
        assert faultd.default_address() == faultd_address
        with faultd.Client() as client:
            assert client.addr == faultd_address
            # What the client adds acts on traffic: the port refuses new connections.
            with socket.socket() as listener:
                listener.bind(("127.0.0.1", 7931))
                listener.listen(4)
                with client.refuse(7931):
                    with pytest.raises(ConnectionRefusedError):
                        socket.create_connection(("127.0.0.1", 7931), timeout=10)
                socket.create_connection(("127.0.0.1", 7931), timeout=10).close()


    def test_module_level_shortcuts_reach_the_started_faultd():
        with socket.socket() as listener:
            listener.bind(("127.0.0.1", 7932))
            listener.listen(4)
            with faultd.limit_bytes(7932, 4, then="reset"):
                client, server = pair(listener, 7932)
                client.sendall(b"1234")
                assert server.recv(4) == b"1234"
                client.sendall(b"one too many")
                # Cut at both ends: the server, blocked in recv, is reset too.
                with pytest.raises(ConnectionResetError):
                    server.recv(100)
                client.close()
                server.close()
            assert [f for f in faultd.list() if f.port == 7932] == []
            client, server = pair(listener, 7932)
            client.sendall(b"free again")
            assert server.recv(100) == b"free again"
            client.close()
            server.close()
''')


def test_faultd_start_is_the_default_of_the_whole_session(tmp_path, request):
    binary = request.config.getoption("--faultd-bin")
    if os.geteuid() != 0:
        pytest.skip("SKIP: not root; --faultd-start starts faultd")
    if not binary or not os.access(binary, os.X_OK):
        pytest.skip("SKIP: no faultd binary; give --faultd-bin PATH or FAULTD_BIN")
    (tmp_path / "test_inner.py").write_text(INNER)
    env = {k: v for k, v in os.environ.items() if k not in ("FAULTD_ADDR", "FAULTD_START")}
    ns = Netns(f"fdplug-{os.getpid()}")
    try:
        out = ns.exec(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs",
             "test_inner.py", "--faultd-start", "lo", f"--faultd-bin={os.path.abspath(binary)}"],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
        )
    finally:
        ns.close()
    assert out.returncode == 0, f"{out.stdout}\n{out.stderr}"
    assert "2 passed" in out.stdout, out.stdout
