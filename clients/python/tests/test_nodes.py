"""faultd.Nodes: one handle on several faultds (here two, each on the `lo` of a namespace
of its own), with a result per node."""

import os

import pytest

import faultd
from faultd import InvalidArgument, Nodes, NodesFailed, Unavailable
from faultd.nodes import parse_node, partition_plan
from conftest import Daemon, Netns, receives, receives_exactly, tcp_pair


@pytest.fixture(scope="module")
def second(netns_daemon, request):
    """A second namespace with a faultd of its own."""
    ns = Netns(f"fdpy2-{os.getpid()}")
    try:
        daemon = Daemon(ns, request.config.getoption("--faultd-bin"))
        try:
            yield ns, daemon
        finally:
            daemon.stop()
    finally:
        ns.close()


def test_node_addresses_and_the_partition_plan():
    assert parse_node("198.18.0.1=unix:/run/a.sock")[1].exploded == "198.18.0.1"
    assert parse_node("unix:/run/a=b.sock") == ("unix:/run/a=b.sock", None)
    with pytest.raises(InvalidArgument, match="not an IP address"):
        parse_node("node-a=10.0.0.1:7447")
    ips = [parse_node(f"198.18.0.{i}=unix:/{i}")[1] for i in (1, 2, 3)]
    names = ["a", "b", "c"]
    plan = partition_plan(ips, names, [2380], ["198.18.0.1"])
    assert plan == [
        [(2380, "198.18.0.2/32"), (2380, "198.18.0.3/32")],
        [(2380, "198.18.0.1/32")],
        [(2380, "198.18.0.1/32")],
    ]
    for bad in ([], ["198.18.0.1", "198.18.0.2", "198.18.0.3"], ["10.9.9.9"]):
        with pytest.raises(InvalidArgument, match="isolate"):
            partition_plan(ips, names, [2380], bad)
    with pytest.raises(InvalidArgument, match="NODE_IP=ADDRESS"):
        partition_plan([ips[0], None], names[:2], [2380], ["198.18.0.1"])


def test_a_fault_on_every_node_acts_on_each_and_goes_with_all(ns, daemon, second):
    ns2, daemon2 = second
    with Nodes([daemon.addr, daemon2.addr]) as nodes:
        pairs = [ns.run(tcp_pair, 7301), ns2.run(tcp_pair, 7301)]
        added = nodes.drop(7301, label="everywhere").all()
        assert [f.label for f in added] == ["everywhere", "everywhere"]
        listed = nodes.list().all()
        assert [[f.id for f in faults] for faults in listed] == [[f.id] for f in added]
        for client, server in pairs:
            client.sendall(b"held")
            assert receives(server, 1.0) == b"", "dropped on this node too"
        with added:
            pass  # leaving the block removes every node's fault
        assert nodes.list().all() == [[], []]
        for client, server in pairs:
            assert receives_exactly(server, b"held", 15) == b"held"
            client.close()
            server.close()


def test_a_node_that_fails_is_named_and_the_others_are_undone(daemon, tmp_path):
    dead = f"unix:{tmp_path}/none.sock"
    with Nodes([daemon.addr, dead], timeout=2) as nodes:
        results = nodes.refuse(7302, label="half")
        assert not results.ok()
        [(node, error)] = results.failures
        assert node == dead and isinstance(error, Unavailable)
        with pytest.raises(NodesFailed, match=r"1 of 2 faultd nodes failed: unix:"):
            results.all()
        # .all() removed the fault the live node had added.
        with faultd.Client(daemon.addr, session=False) as observer:
            assert observer.list() == []


def test_a_partition_gives_each_node_the_other_sides_peers(daemon, second):
    _, daemon2 = second
    nodes = Nodes([f"10.0.0.1={daemon.addr}", f"10.0.0.2={daemon2.addr}"])
    with nodes, nodes.partition([2380, 2379], isolate=["10.0.0.1"], ttl=30).all():
        listed = nodes.list().all()
        peers = [
            sorted((f.port, f.proto.spec.target.peer, f.label) for f in faults)
            for faults in listed
        ]
        assert peers == [
            [(2379, "10.0.0.2/32", "partition"), (2380, "10.0.0.2/32", "partition")],
            [(2379, "10.0.0.1/32", "partition"), (2380, "10.0.0.1/32", "partition")],
        ]
    with faultd.Client(daemon.addr, session=False) as observer:
        assert observer.list() == []
