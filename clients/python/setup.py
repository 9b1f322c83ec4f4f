"""Generates the gRPC stubs from faultd's proto while building the package.

The proto lives at the repository root (proto/faultd/v1/faultd.proto), outside this
package: a build from the repository reads it there; an sdist carries a copy (made by the
sdist command below), so a build from the sdist works too.
"""

import os
import shutil

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.command.sdist import sdist

HERE = os.path.dirname(os.path.abspath(__file__))
PROTO = os.path.join("faultd", "v1", "faultd.proto")
# The repository's proto first: a copy left in this directory may be stale.
PROTO_ROOTS = [
    os.path.join(HERE, "..", "..", "proto"),
    os.path.join(HERE, "proto"),
]


def proto_root():
    for root in PROTO_ROOTS:
        if os.path.exists(os.path.join(root, PROTO)):
            return os.path.normpath(root)
    raise SystemExit(f"faultd: cannot find {PROTO} under any of {PROTO_ROOTS}")


def generate(out_dir):
    """Writes faultd/v1/faultd_pb2{,_grpc}.py(i) under out_dir: the stubs import each
    other as `faultd.v1.…`, which is where they land inside this package."""
    from grpc_tools import protoc

    root = proto_root()
    well_known = os.path.join(os.path.dirname(protoc.__file__), "_proto")
    args = [
        "grpc_tools.protoc",
        f"-I{root}",
        f"-I{well_known}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        os.path.join(root, PROTO),
    ]
    if protoc.main(args) != 0:
        raise SystemExit(f"faultd: protoc failed on {os.path.join(root, PROTO)}")
    init = os.path.join(out_dir, "faultd", "v1", "__init__.py")
    with open(init, "w") as f:
        f.write('"""Generated from proto/faultd/v1/faultd.proto at build time."""\n')


class BuildPy(build_py):
    def run(self):
        super().run()
        generate(self.build_lib)


class Sdist(sdist):
    def make_release_tree(self, base_dir, files):
        super().make_release_tree(base_dir, files)
        target = os.path.join(base_dir, "proto", PROTO)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        shutil.copy(os.path.join(proto_root(), PROTO), target)


def runtime_requirements():
    """The generated code refuses older grpcio/protobuf than the generator's."""
    try:
        import grpc_tools
        from importlib.metadata import version

        tools = version("grpcio-tools")
        proto = version("protobuf")
        del grpc_tools
        return [f"grpcio>={tools}", f"protobuf>={proto}"]
    except Exception:  # metadata only (e.g. egg_info without grpcio-tools)
        return ["grpcio>=1.62", "protobuf>=4.25"]


setup(
    cmdclass={"build_py": BuildPy, "sdist": Sdist},
    install_requires=runtime_requirements(),
)
