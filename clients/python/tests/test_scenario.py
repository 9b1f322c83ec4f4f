"""Timed scenarios from Python: the files of examples/scenarios/ read as faultctl reads
them, mistakes named with line and column, and a run against a real faultd (conftest.py)
that adds and removes on time and heals when stopped."""

import json
import os
import pathlib
import subprocess
import threading
import time

import pytest

from faultd import Scenario, ScenarioError, ScenarioFailed
from faultd.v1 import faultd_pb2 as pb

EXAMPLES = pathlib.Path(__file__).resolve().parents[3] / "examples" / "scenarios"


def examples():
    return sorted(EXAMPLES.glob("*.toml"))


def error(text):
    with pytest.raises(ScenarioError) as e:
        Scenario.from_string(text, "chaos.toml")
    return e.value.line, e.value.column, e.value.detail


def test_the_examples_parse():
    names = [p.name for p in examples()]
    assert names == ["etcd-partition.toml", "flapping-link.toml", "slow-network.toml"]
    for path in examples():
        s = Scenario.from_path(path)
        assert s.plan()[0]["event"] == "start" and s.plan()[-1]["event"] == "heal"


def test_the_flapping_link_is_five_two_second_outages():
    s = Scenario.from_path(EXAMPLES / "flapping-link.toml")
    timeline = [(r["event"], r["at_ms"]) for r in s.plan()]
    want = [("start", 0)]
    for round_ in range(5):
        want += [("add", round_ * 5000), ("remove", round_ * 5000 + 2000)]
    want.append(("heal", 22000))
    assert timeline == want


def test_a_fault_is_what_the_client_would_send():
    s = Scenario.from_string(
        '[[step]]\nat = "0s"\nfaults = [\n'
        '  { action = "drop", port = 2380, direction = "to-port", peer = "127.0.0.3", probability = 0.5 },\n'
        '  { action = "delay", port = 80, latency = "200ms", jitter-us = 50 },\n'
        '  { action = "rate", port = 80, bits-per-second = "1mbit", label = "thin" },\n'
        '  { action = "limit-age", port = 80, after = "2s", then = "drop", protocol = "udp" },\n'
        "]\n"
    )
    (drop, d1), (delay, _), (rate, _), (limit, _) = s.steps[0].faults
    want = pb.FaultSpec(
        target=pb.Target(port=2380, direction=pb.DIRECTION_TO_PORT, peer="127.0.0.3"),
        action=pb.Action(drop=pb.Drop(probability=0.5)),
        label="scenario:scenario",
    )
    assert drop == want
    assert d1 == "drop port=2380 direction=to-port peer=127.0.0.3 probability=0.5"
    assert (delay.action.delay.latency_us, delay.action.delay.jitter_us) == (200_000, 50)
    assert rate.action.rate.bits_per_second == 1_000_000 and rate.label == "thin"
    assert (limit.action.limit_age.after_ms, limit.action.limit_age.then) == (2000, pb.THEN_DROP)
    assert limit.target.protocol == pb.PROTOCOL_UDP


def test_a_port_range_is_written_as_faultctl_writes_it():
    def target(fault):
        s = Scenario.from_string(f'[[step]]\nat = "0s"\nfaults = [{fault}]\n')
        return s.steps[0].faults[0][0].target
    assert (target('{ action = "drop", port = "2379-2381" }').port_end) == 2381
    assert (target('{ action = "drop", port = "2379-2381" }').port) == 2379
    assert (target('{ action = "drop", port = "2379" }').port_end) == 0
    assert (target('{ action = "drop", port = 2379, port-end = 2381 }').port_end) == 2381
    for fault, message in [
        ('{ action = "drop", port = "2381-2379" }', "port: the range 2381-2379 ends before it starts"),
        ('{ action = "drop", port = "http" }', 'port: "http" is not a port (1-65535)'),
        ('{ action = "drop", port-end = 2381, port = "2379-2380" }', "`port-end` is given too"),
    ]:
        with pytest.raises(ScenarioError) as e:
            target(fault)
        assert message in str(e.value), str(e.value)


def test_errors_say_line_and_column():
    line, column, message = error('[[step]]\nat = "5x"\nfault = { action = "drop", port = 1 }\n')
    assert (line, column) == (2, 6), message
    assert message.startswith('at: "5x" is not a duration'), message

    line, column, message = error('[[step]]\nat = "0s"\nfault = { action = "drp", port = 1 }\n')
    assert (line, column) == (3, 20), message
    assert message.startswith('action: "drp" is not an action (one of drop,'), message

    line, column, message = error('[[step]]\nat = "0s"\nfault = { port = 1 }\n')
    assert line == 3, message
    assert message.startswith("missing field `action`"), message

    line, _, message = error('\n[[step]]\nfault = { action = "drop", port = 1 }\n')
    assert line == 2 and "missing field `at`" in message, message

    line, column, message = error('[[step]]\nat = "0s"\nfault = { action = "drop", prot = 1 }\n')
    assert (line, column) == (3, 28), message
    assert message.startswith("unknown field `prot` for drop"), message

    line, column, message = error(
        '[[step]]\nat = "0s"\nfaults = [\n  { action = "drop", port = 1 },\n  { action = "drop", port = -1 },\n]\n'
    )
    assert line == 5, message
    assert message == "port: expected an integer that fits uint32, found -1"

    # TOML itself: the parser's position.
    line, _, _ = error('[[step]]\nat = "0s\nremove = "all"\n')
    assert line == 2


def test_inconsistent_steps_are_refused():
    cases = [
        ('[[step]]\nat = "0s"\n', "a step needs `fault`, `faults` or `remove`"),
        ('[[step]]\nat = "0s"\nremove = "x"\n', 'remove: "x" is not the name'),
        ('[[step]]\nat = "0s"\nrepeat = 3\nfault = { action = "drop", port = 1 }\n', "repeat: needs `every`"),
        ('[[step]]\nat = "0s"\nfor = "3s"\nrepeat = 2\nevery = "2s"\nfault = { action = "drop", port = 1 }\n',
         "every: 2s is shorter than `for`"),
        ('heal = "1s"\n[[step]]\nat = "5s"\nremove = "all"\n', "heal: 1s is before the last planned action"),
        ('name = "x"\n', "no [[step]]"),
    ]
    for text, want in cases:
        _, _, message = error(text)
        assert message.startswith(want), (text, message)


@pytest.fixture
def faultctl_bin(request):
    faultd_bin = request.config.getoption("--faultd-bin")
    path = os.path.join(os.path.dirname(faultd_bin or ""), "faultctl")
    if not faultd_bin or not os.access(path, os.X_OK):
        pytest.skip("SKIP: no faultctl beside the faultd binary (cargo build -p faultctl)")
    return path


def test_python_and_faultctl_plan_the_same_timeline(faultctl_bin):
    for path in examples():
        out = subprocess.run([faultctl_bin, "--json", "run", "--check", str(path)],
                             capture_output=True, text=True, check=True)
        theirs = [json.loads(line) for line in out.stdout.splitlines()]
        ours = Scenario.from_path(path).plan()
        assert ours == theirs, path.name


def test_a_run_adds_removes_and_heals_when_stopped(faultd_client, observer):
    s = Scenario.from_string(
        'heal = "60s"\n'
        '[[step]]\nname = "blip"\nat = "200ms"\nfor = "300ms"\nfault = { action = "drop", port = 7191 }\n'
        '[[step]]\nname = "hold"\nat = "300ms"\nfault = { action = "refuse", port = 7192 }\n'
    )
    seen = []
    stop = threading.Event()

    def report(row):
        seen.append((row["event"], row["at_ms"], row["elapsed_ms"],
                     sorted(f.port for f in observer.list())))
        if row["event"] == "remove":
            stop.set()  # interrupt the long wait for the heal

    started = time.monotonic()
    rows = s.run(faultd_client, report=report, stop=stop)
    # The heal is planned at 60 s: a run that waited for it would take a minute. A deadline,
    # not a timing check.
    assert time.monotonic() - started < 30, "stopping did not cut the wait for the heal at 60 s"
    assert [(e, at) for e, at, _, _ in seen] == [
        ("start", 0), ("add", 200), ("add", 300), ("remove", 500), ("heal", 60000)]
    # What faultd held after each row.
    assert [ports for *_, ports in seen] == [[], [7191], [7191, 7192], [7192], []]
    # Never early; how late is the machine's business (a figure, not an assertion).
    for event, at, elapsed, _ in seen[1:4]:
        assert at <= elapsed, (event, at, elapsed)
        print(f"MEASURE {event} planned at {at} ms ran at {elapsed} ms")
    assert rows[-1]["note"] == "stopped"
    assert observer.list() == []


def test_the_run_binds_its_faults_to_the_session(faultd_client, observer):
    s = Scenario.from_string('heal = "10s"\n[[step]]\nat = "0s"\nfault = { action = "drop", port = 7193 }\n')
    stop = threading.Event()
    sessions = []

    def report(row):
        if row["event"] == "add":
            sessions.extend(f.session_id for f in observer.list())
            stop.set()

    s.run(faultd_client, report=report, stop=stop)
    assert sessions == [faultd_client.session_id] and sessions[0] > 0


def test_a_refused_step_fails_after_the_heal(faultd_client, observer):
    s = Scenario.from_string(
        '[[step]]\nat = "0s"\nfault = { action = "drop", port = 7194 }\n'
        '[[step]]\nname = "bad"\nat = "100ms"\nfault = { action = "loss", port = 7194, percent = 150 }\n'
    )
    with pytest.raises(ScenarioFailed) as e:
        s.run(faultd_client)
    assert str(e.value).startswith('step 2 "bad" at 100ms: action.loss.percent'), str(e.value)
    assert e.value.rows[-1]["event"] == "heal" and e.value.rows[-1]["note"] == "failed"
    assert observer.list() == []


class FakeClient:
    """What a run uses of a Client, recording calls: for the runner's logic without faultd."""

    session_id = 42

    def __init__(self, refuse_port=None):
        self.calls, self.next_id, self.refuse_port = [], 0, refuse_port

    def _call(self, method, request):
        assert method == "AddFault" and request.session_id == 42
        if request.spec.target.port == self.refuse_port:
            from faultd import InvalidArgument
            raise InvalidArgument("action.loss.percent: 150 is not in (0, 100]")
        self.next_id += 1
        self.calls.append(("add", self.next_id, request.spec.target.port))
        return pb.Fault(id=self.next_id, spec=request.spec, session_id=42)

    def remove(self, fault_id, missing_ok=False):
        assert missing_ok
        self.calls.append(("remove", fault_id))
        return True


def test_the_runner_adds_lifts_removes_and_heals_in_order():
    s = Scenario.from_string(
        'heal = "300ms"\n'
        '[[step]]\nname = "flap"\nat = "0s"\nfor = "50ms"\nrepeat = 2\nevery = "100ms"\n'
        'fault = { action = "drop", port = 7 }\n'
        '[[step]]\nname = "hold"\nat = "20ms"\nfault = { action = "drop", port = 8 }\n'
        '[[step]]\nat = "250ms"\nremove = "flap"\n'
    )
    client = FakeClient()
    rows = s.run(client)
    assert client.calls == [
        ("add", 1, 7), ("add", 2, 8), ("remove", 1), ("add", 3, 7), ("remove", 3), ("remove", 2)]
    assert [(r["event"], r["at_ms"], r["fault_ids"]) for r in rows] == [
        ("start", 0, []), ("add", 0, [1]), ("add", 20, [2]), ("remove", 50, [1]),
        ("add", 100, [3]), ("remove", 150, [3]), ("remove", 250, []), ("heal", 300, [2])]
    assert rows[-1]["note"] == "end"
    for row in rows:
        assert row["at_ms"] <= row["elapsed_ms"], row


def test_a_refused_step_heals_before_raising():
    s = Scenario.from_string(
        '[[step]]\nat = "0s"\nfault = { action = "drop", port = 7 }\n'
        '[[step]]\nname = "bad"\nat = "10ms"\nfault = { action = "loss", port = 9, percent = 150 }\n'
    )
    client = FakeClient(refuse_port=9)
    with pytest.raises(ScenarioFailed) as e:
        s.run(client)
    assert str(e.value) == 'step 2 "bad" at 10ms: action.loss.percent: 150 is not in (0, 100]'
    assert client.calls == [("add", 1, 7), ("remove", 1)]
    assert e.value.rows[-1]["note"] == "failed"


def test_stopping_heals_at_once():
    s = Scenario.from_string('[[step]]\nat = "0s"\nfor = "60s"\nfault = { action = "drop", port = 7 }\n')
    client, stop = FakeClient(), threading.Event()
    threading.Timer(0.1, stop.set).start()
    started = time.monotonic()
    rows = s.run(client, stop=stop)
    # The step is 60 s long: a deadline far below that shows the stop cut it short.
    assert time.monotonic() - started < 30
    assert client.calls == [("add", 1, 7), ("remove", 1)]
    assert (rows[-1]["event"], rows[-1]["note"]) == ("heal", "stopped")
