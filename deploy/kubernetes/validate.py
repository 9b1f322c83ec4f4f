"""Checks Kubernetes manifests against the Kubernetes API's types, without a cluster.

The types are the API's OpenAPI schema as the official Python client carries it: from
version 37 on, the `kubernetes` package's models are pydantic models generated from that
schema, strict (a string where an integer belongs is an error), with every required field
required and unknown fields forbidden (a typo, or a field of another API version). Each
object is validated by the model of its apiVersion and kind; each error names its path.
Values are not checked beyond their types (enum values, quantities' syntax and the API
server's own rules need a cluster).

    python deploy/kubernetes/validate.py deploy/kubernetes/faultd.yaml
"""

import sys

import kubernetes
import kubernetes.client as k8s
import pydantic
import yaml

# apiVersion and kind -> the model of the object.
KINDS = {
    ("v1", "Namespace"): k8s.V1Namespace,
    ("v1", "ServiceAccount"): k8s.V1ServiceAccount,
    ("apps/v1", "DaemonSet"): k8s.V1DaemonSet,
}

if not hasattr(k8s.V1DaemonSet, "model_validate"):
    sys.exit(
        f"kubernetes {kubernetes.__version__} has no validating models: "
        "pip install 'kubernetes>=37'"
    )


def validate_object(obj):
    """The errors of one manifest object, each `path: what is wrong`."""
    if not isinstance(obj, dict):
        return [f"<document>: an object expected, not {type(obj).__name__}"]
    key = (obj.get("apiVersion"), obj.get("kind"))
    model = KINDS.get(key)
    if model is None:
        known = ", ".join(f"{v} {k}" for v, k in KINDS)
        return [f"apiVersion/kind: {key[0]} {key[1]} is not a kind checked here ({known})"]
    try:
        validated = model.model_validate(obj)
    except pydantic.ValidationError as e:
        return [
            f"{key[1]}.{'.'.join(str(p) for p in err['loc'])}: {err['msg']}"
            for err in e.errors()
        ]
    return json_names(obj, validated, key[1])


def json_names(obj, validated, path):
    """The models also take their Python names (`host_network`), which the API server
    does not: every key must be the field's JSON name."""
    if isinstance(validated, pydantic.BaseModel) and isinstance(obj, dict):
        # The generated models' map from Python name to JSON name.
        by_name = type(validated).attribute_map
        by_json = {json: name for name, json in by_name.items()}
        errors = []
        for key, value in obj.items():
            if key not in by_json:
                errors.append(f"{path}.{key}: not the API's name; write {by_name[key]}")
                continue
            errors += json_names(value, getattr(validated, by_json[key]), f"{path}.{key}")
        return errors
    if isinstance(validated, list) and isinstance(obj, list):
        return [
            e for i, (o, v) in enumerate(zip(obj, validated)) for e in json_names(o, v, f"{path}[{i}]")
        ]
    return []


def validate_file(path):
    """The errors of every document in a YAML file, each with its document's number."""
    with open(path) as f:
        docs = [d for d in yaml.safe_load_all(f) if d is not None]
    if not docs:
        return [f"{path}: no object in it"]
    return [
        f"{path} document {i + 1}: {e}" for i, doc in enumerate(docs) for e in validate_object(doc)
    ]


def main(paths):
    errors = [e for p in paths for e in validate_file(p)]
    for e in errors:
        print(e, file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
