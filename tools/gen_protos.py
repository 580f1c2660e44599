"""Generate the Python gRPC code in fogline/_proto from protos/, or check that it matches.

    python tools/gen_protos.py           # regenerate
    python tools/gen_protos.py --check   # exit 1 if the committed code is stale

Generated with grpcio-tools 1.81.x on purpose: its stubs load under protobuf 6 (which
tritonclient[grpc] 2.73 requires) and 7, while 1.85 stubs refuse protobuf 6.
"""

from __future__ import annotations

import argparse
import difflib
import re
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTOS = ROOT / "protos"
TARGET = ROOT / "fogline" / "_proto"
REQUIRED_TOOLS = "1.81."


def generate(out_dir: Path) -> list[Path]:
    import grpc_tools
    from grpc_tools import protoc

    version = getattr(grpc_tools, "__version__", None) or _tools_version()
    if not version.startswith(REQUIRED_TOOLS):
        sys.exit(f"grpcio-tools {REQUIRED_TOOLS}x is required (found {version}); run `make install`")
    include = Path(grpc_tools.__file__).parent / "_proto"
    sources = sorted(PROTOS.glob("*.proto"))
    args = ["protoc", f"-I{PROTOS}", f"-I{include}", f"--python_out={out_dir}",
            f"--pyi_out={out_dir}", f"--grpc_python_out={out_dir}", *map(str, sources)]
    if protoc.main(args) != 0:
        sys.exit("protoc failed")
    files = sorted(p for p in out_dir.iterdir() if p.suffix in (".py", ".pyi"))
    for path in files:
        # protoc writes top-level imports; the modules live in a package, so make them relative.
        text = re.sub(r"^import (\w+_pb2) as", r"from . import \1 as", path.read_text(), flags=re.M)
        path.write_text(text)
    return files


def _tools_version() -> str:
    from importlib.metadata import version

    return version("grpcio-tools")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if fogline/_proto is stale")
    check = parser.parse_args().check
    with tempfile.TemporaryDirectory() as tmp:
        fresh = {p.name: p.read_text() for p in generate(Path(tmp))}
    if not check:
        for name, text in fresh.items():
            (TARGET / name).write_text(text)
        print(f"wrote {len(fresh)} files to {TARGET.relative_to(ROOT)}")
        return 0
    committed = {p.name: p.read_text() for p in TARGET.iterdir() if p.suffix in (".py", ".pyi")}
    committed.pop("__init__.py", None)
    stale = False
    for name in sorted(set(fresh) | set(committed)):
        if fresh.get(name) != committed.get(name):
            stale = True
            diff = difflib.unified_diff((committed.get(name) or "").splitlines(),
                                        (fresh.get(name) or "").splitlines(), name, name, lineterm="")
            print("\n".join(list(diff)[:40]))
    if stale:
        print("fogline/_proto does not match protos/: run `python tools/gen_protos.py`")
        return 1
    print("fogline/_proto matches protos/")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
