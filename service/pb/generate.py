"""Regenerates the committed protobuf code from proto/ (``python -m service.pb.generate``).

grpc_tools emits absolute imports such as ``from meterd.v1 import traffic_pb2``; the generated
files live inside the ``service.pb`` package, so those imports are rewritten to package paths.
``--check`` compares instead of writing, which the freshness test uses.
"""

from __future__ import annotations

import re
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PROTO_DIR = ROOT / "proto"
OUT_DIR = Path(__file__).resolve().parent
_IMPORT = re.compile(r"^from meterd\.v1 import ", re.MULTILINE)


def generate(out_dir: Path) -> list[Path]:
    import grpc_tools
    from grpc_tools import protoc  # dev dependency, only needed to regenerate

    protos = sorted(str(p.relative_to(PROTO_DIR)) for p in PROTO_DIR.rglob("*.proto"))
    include = str(Path(grpc_tools.__file__).parent / "_proto")
    args = ["protoc", f"-I{PROTO_DIR}", f"-I{include}", f"--python_out={out_dir}", f"--pyi_out={out_dir}",
            f"--grpc_python_out={out_dir}", *protos]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    written = []
    generated = [*out_dir.joinpath("meterd").rglob("*.py"), *out_dir.joinpath("meterd").rglob("*.pyi")]
    for path in sorted(p for p in generated if p.name != "__init__.py"):
        text = _IMPORT.sub("from service.pb.meterd.v1 import ", path.read_text())
        path.write_text(text)
        written.append(path)
    for pkg in (out_dir / "meterd", out_dir / "meterd" / "v1"):
        (pkg / "__init__.py").touch()
    return written


def main() -> int:
    check = "--check" in sys.argv
    if not check:
        generate(OUT_DIR)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        fresh = {p.relative_to(tmp): p.read_text() for p in generate(Path(tmp))}
    stale = [str(rel) for rel, text in fresh.items()
             if not (OUT_DIR / rel).exists() or (OUT_DIR / rel).read_text() != text]
    if stale:
        print("stale generated code, run `make proto`:", ", ".join(stale))
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
