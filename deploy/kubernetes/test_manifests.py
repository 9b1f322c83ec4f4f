"""deploy/kubernetes against the Kubernetes API's types (validate.py), and what the
DaemonSet promises: the node's network, the minimal capabilities, the host paths, a socket
for node-local clients, health through faultd's gRPC health service. No cluster is used.

    target/python-venv/bin/python -m pytest deploy/kubernetes   (cargo xtask python-test)
"""

import copy
import os

import pytest
import yaml

from validate import validate_file, validate_object

HERE = os.path.dirname(os.path.abspath(__file__))
MANIFESTS = sorted(
    os.path.join(HERE, f) for f in os.listdir(HERE) if f.endswith((".yaml", ".yml"))
)


def objects():
    return [d for p in MANIFESTS for d in yaml.safe_load_all(open(p)) if d is not None]


def daemonset():
    [ds] = [o for o in objects() if o["kind"] == "DaemonSet"]
    return ds


def test_every_manifest_matches_the_api_types():
    assert MANIFESTS, "no manifest in deploy/kubernetes"
    for path in MANIFESTS:
        assert validate_file(path) == [], path
    kinds = sorted(o["kind"] for o in objects())
    assert kinds == ["DaemonSet", "Namespace", "ServiceAccount"]


@pytest.mark.parametrize(
    "mutate, says",
    [
        # A typo: an unknown field.
        (lambda ds: ds["spec"]["template"]["spec"].update(hostNetwrk=True), "hostNetwrk"),
        # The Python name of a field, which the API server does not take.
        (
            lambda ds: ds["spec"]["template"]["spec"].update(
                host_network=ds["spec"]["template"]["spec"].pop("hostNetwork")
            ),
            "hostNetwork",
        ),
        # A wrong type.
        (lambda ds: ds["spec"]["template"]["spec"].update(hostNetwork="yes"), "hostNetwork"),
        (
            lambda ds: ds["spec"]["template"]["spec"]["containers"][0]["readinessProbe"].update(
                periodSeconds="5"
            ),
            "periodSeconds",
        ),
        # A required field missing.
        (lambda ds: ds["spec"]["template"]["spec"]["containers"][0].pop("name"), "name"),
        (lambda ds: ds["spec"].pop("selector"), "selector"),
        # Another kind's version.
        (lambda ds: ds.update(apiVersion="extensions/v1beta1"), "apiVersion"),
    ],
)
def test_the_validator_refuses_what_the_api_refuses(mutate, says):
    ds = copy.deepcopy(daemonset())
    mutate(ds)
    errors = validate_object(ds)
    assert errors and any(says in e for e in errors), errors


def container():
    return daemonset()["spec"]["template"]["spec"]["containers"][0]


def test_faultd_runs_in_the_nodes_network_with_minimal_capabilities():
    pod = daemonset()["spec"]["template"]["spec"]
    assert pod["hostNetwork"] is True
    assert pod["dnsPolicy"] == "ClusterFirstWithHostNet"
    security = container()["securityContext"]
    assert security["privileged"] is False
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {
        "drop": ["ALL"],
        "add": ["NET_ADMIN", "BPF", "PERFMON"],
    }
    account = pod["serviceAccountName"]
    [sa] = [o for o in objects() if o["kind"] == "ServiceAccount"]
    assert sa["metadata"]["name"] == account
    assert sa["metadata"]["namespace"] == daemonset()["metadata"]["namespace"]
    assert pod["automountServiceAccountToken"] is False


def test_host_paths_and_the_socket_for_node_local_clients():
    pod = daemonset()["spec"]["template"]["spec"]
    volumes = {v["name"]: v["hostPath"]["path"] for v in pod["volumes"]}
    mounts = {m["mountPath"]: volumes[m["name"]] for m in container()["volumeMounts"]}
    assert mounts == {"/sys/fs/bpf": "/sys/fs/bpf", "/run/faultd": "/run/faultd"}
    argv = container()["command"] + container()["args"]
    socket = argv[argv.index("--socket") + 1]
    assert os.path.dirname(socket) == "/run/faultd", "the socket is on the host path"
    assert "--iface" in argv


def test_health_is_asked_of_the_grpc_health_service_over_the_socket():
    argv = container()["command"]
    socket = argv[argv.index("--socket") + 1]
    for probe in ("livenessProbe", "readinessProbe"):
        command = container()[probe]["exec"]["command"]
        assert command[:4] == ["/usr/bin/faultctl", "--addr", f"unix:{socket}", "health"], probe
