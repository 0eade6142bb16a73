#!/usr/bin/env python3
"""Generate the Python code for ``proto/`` into the ``livedesk.contracts`` package.

Usage::

    python tools/gen_proto.py          # (re)write libs/contracts/src/livedesk/contracts
    python tools/gen_proto.py --check  # exit 1, naming the stale files, if it is out of date

Runs ``grpc_tools.protoc`` with the ``python``, ``grpc_python`` and mypy-protobuf's
``mypy`` / ``mypy_grpc`` generators into a temporary directory, then:

* moves the Python modules under the ``livedesk.contracts`` prefix: protoc's Python
  generator has no module-prefix option, so the imports it writes
  (``from livedesk.events.v1 import common_pb2``) are rewritten to
  ``from livedesk.contracts.events.v1 import common_pb2``. Proto package names, gRPC
  method paths and serialized descriptors keep their ``livedesk.<area>.v1`` names;
* drops the empty ``*_pb2_grpc`` modules of proto files that define no service;
* adds an ``__init__.py`` to every package directory and a ``py.typed`` marker.

The whole output directory belongs to this tool: a file in it that the tool does not
generate is stale and is deleted (or reported by ``--check``). The output depends only
on the proto files and the versions of grpcio-tools and mypy-protobuf.

Exit status: 0 up to date or written, 1 stale (``--check``), 2 generation failed.
"""

from __future__ import annotations

import argparse
import importlib.resources
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

from google.protobuf import descriptor_pb2

__all__ = ["generate", "main", "rewrite_module", "sync_tree"]

REPO_ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = REPO_ROOT / "proto"
OUT_ROOT = REPO_ROOT / "libs" / "contracts" / "src" / "livedesk" / "contracts"

#: Top-level proto directory (and Python package protoc generates into).
PROTO_TOP = "livedesk"
#: Python package the generated modules really live in.
PY_PACKAGE = "livedesk.contracts"

_FROM_IMPORT = re.compile(rf"^from {PROTO_TOP}\.(?!contracts\b)", re.MULTILINE)
_IMPORT = re.compile(rf"^import {PROTO_TOP}\.(?!contracts\b)", re.MULTILINE)
# A generated module's own dotted name in a string literal, e.g. the module name
# passed to _builder.BuildTopDescriptorsAndMessages. Only names of *_pb2 / *_pb2_grpc
# modules match, never proto package or service names.
_MODULE_NAME = re.compile(rf"""(['"]){PROTO_TOP}\.(?!contracts\.)((?:\w+\.)*\w+_pb2(?:_grpc)?)\1""")
# A generated module's file path in a message, e.g. the grpcio version check.
_MODULE_PATH = re.compile(rf"\b{PROTO_TOP}/(?!contracts/)((?:\w+/)*\w+_pb2(?:_grpc)?\.py)\b")

_PACKAGE_DOC = '"""Generated from proto/{path} by tools/gen_proto.py. Do not edit."""\n'
_ROOT_DOC = (
    '"""LiveDesk contracts: Python code generated from proto/ by tools/gen_proto.py.\n'
    "\n"
    "Do not edit: change the proto files and run ``make proto``.\n"
    '"""\n'
)


class GenerationError(Exception):
    """protoc or one of its plugins could not run or failed."""


def rewrite_module(text: str) -> str:
    """Move the imports and module names of one generated file under ``PY_PACKAGE``."""
    text = _FROM_IMPORT.sub(f"from {PY_PACKAGE}.", text)
    text = _IMPORT.sub(f"import {PY_PACKAGE}.", text)
    text = _MODULE_NAME.sub(rf"\1{PY_PACKAGE}.\2\1", text)
    return _MODULE_PATH.sub(rf"{PY_PACKAGE.replace('.', '/')}/\1", text)


def _plugin(name: str) -> Path:
    """Path of a protoc plugin script installed next to the running interpreter."""
    for scripts in (Path(sysconfig.get_path("scripts")), Path(sys.executable).parent):
        for candidate in (scripts / name, scripts / f"{name}.exe"):
            if candidate.is_file():
                return candidate
    raise GenerationError(
        f"{name} not found next to {sys.executable}: install mypy-protobuf "
        "in this environment (uv sync)"
    )


def _run_protoc(protos: list[Path], out_dir: Path, descriptor_set: Path) -> None:
    include = importlib.resources.files("grpc_tools") / "_proto"
    cmd = [
        sys.executable,
        "-m",
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"-I{include}",
        f"--plugin=protoc-gen-mypy={_plugin('protoc-gen-mypy')}",
        f"--plugin=protoc-gen-mypy_grpc={_plugin('protoc-gen-mypy_grpc')}",
        f"--python_out={out_dir}",
        f"--mypy_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        f"--mypy_grpc_out={out_dir}",
        f"--descriptor_set_out={descriptor_set}",
        *(str(p) for p in protos),
    ]
    proc = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise GenerationError(f"protoc failed ({proc.returncode}):\n{proc.stderr}{proc.stdout}")


def _files_with_services(descriptor_set: Path) -> set[str]:
    fds = descriptor_pb2.FileDescriptorSet()
    fds.ParseFromString(descriptor_set.read_bytes())
    return {f.name for f in fds.file if f.service}


def generate() -> dict[str, bytes]:
    """Generate the package; returns its files as {path relative to OUT_ROOT: content}."""
    protos = sorted(PROTO_ROOT.rglob("*.proto"))
    if not protos:
        raise GenerationError(f"no .proto files under {PROTO_ROOT}")
    with tempfile.TemporaryDirectory(prefix="gen_proto-") as tmp:
        out_dir = Path(tmp) / "out"
        out_dir.mkdir()
        descriptor_set = Path(tmp) / "descriptors.binpb"
        _run_protoc(protos, out_dir, descriptor_set)
        with_services = _files_with_services(descriptor_set)

        files: dict[str, bytes] = {}
        for path in sorted((out_dir / PROTO_TOP).rglob("*")):
            if not path.is_file():
                continue
            rel = path.relative_to(out_dir / PROTO_TOP).as_posix()
            if "_pb2_grpc." in path.name:
                proto_name = f"{PROTO_TOP}/{rel.rsplit('_pb2_grpc.', 1)[0]}.proto"
                if proto_name not in with_services:
                    continue
            files[rel] = rewrite_module(path.read_text(encoding="utf-8")).encode()

    packages = {""}
    for rel in list(files):
        parts = rel.split("/")[:-1]
        packages.update("/".join(parts[:i]) for i in range(1, len(parts) + 1))
    for pkg in packages:
        init = f"{pkg}/__init__.py" if pkg else "__init__.py"
        doc = _PACKAGE_DOC.format(path=f"{PROTO_TOP}/{pkg}") if pkg else _ROOT_DOC
        files[init] = doc.encode()
    files["py.typed"] = b""
    return dict(sorted(files.items()))


def _existing(root: Path) -> dict[str, bytes]:
    if not root.is_dir():
        return {}
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and "__pycache__" not in p.relative_to(root).parts
    }


def sync_tree(wanted: dict[str, bytes], root: Path, *, check: bool) -> list[str]:
    """Make ``root`` hold exactly ``wanted``; returns the stale paths as "status path".

    With ``check`` nothing is written.
    """
    have = _existing(root)
    stale = [f"create  {p}" for p in wanted if p not in have]
    stale += [f"update  {p}" for p in wanted if p in have and have[p] != wanted[p]]
    stale += [f"delete  {p}" for p in have if p not in wanted]
    if check:
        return sorted(stale, key=lambda s: s.split()[-1])
    for rel, content in wanted.items():
        if have.get(rel) != content:
            target = root / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(content)
    for rel in have:
        if rel not in wanted:
            (root / rel).unlink()
    # Remove directories left empty (but for bytecode caches), deepest first.
    dirs = [p for p in root.rglob("*") if p.is_dir() and "__pycache__" not in p.parts]
    for d in sorted(dirs, reverse=True):
        entries = list(d.iterdir())
        if all(e.name == "__pycache__" for e in entries):
            for cache in entries:
                shutil.rmtree(cache)
            d.rmdir()
    return sorted(stale, key=lambda s: s.split()[-1])


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument(
        "--check",
        action="store_true",
        help="write nothing; exit 1 naming the files that are out of date",
    )
    args = parser.parse_args(argv)
    try:
        wanted = generate()
    except GenerationError as exc:
        print(f"gen_proto: {exc}", file=sys.stderr)
        return 2
    changes = sync_tree(wanted, OUT_ROOT, check=args.check)
    shown = OUT_ROOT.relative_to(REPO_ROOT).as_posix()
    if args.check:
        if changes:
            print(f"gen_proto: generated code in {shown} is stale:", file=sys.stderr)
            for line in changes:
                print(f"  {line}", file=sys.stderr)
            print("run `make proto` (python tools/gen_proto.py) and commit", file=sys.stderr)
            return 1
        print(f"gen_proto: {shown} is up to date ({len(wanted)} files)")
        return 0
    for line in changes:
        print(f"  {line}")
    print(f"gen_proto: {shown}: {len(changes)} change(s), {len(wanted)} files")
    return 0


if __name__ == "__main__":
    sys.exit(main())
