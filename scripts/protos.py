"""Regenerate client/hashcheck/v1/ from proto/, or check that it is current.

    python scripts/protos.py          # rewrite client/hashcheck/v1/
    python scripts/protos.py --check  # exit 1 when it is stale

The generated modules live in the versioned package `hashcheck.v1`, so the
proto file sits at proto/hashcheck/v1/ and the generated imports read
`from hashcheck.v1 import ...`.
"""

from __future__ import annotations

import argparse
import filecmp
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "proto"
PACKAGE_DIR = ROOT / "client" / "hashcheck" / "v1"
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py", "_pb2_grpc.pyi")


def generate(out_dir: Path) -> list[Path]:
    protos = sorted(PROTO_ROOT.rglob("*.proto"))
    # The mypy plugins are console scripts beside this interpreter, which may
    # not be on PATH when the venv is not activated.
    bin_dir = Path(sys.executable).parent
    command = [
        sys.executable,
        "-m",
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"--python_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        f"--plugin=protoc-gen-mypy={bin_dir / 'protoc-gen-mypy'}",
        f"--plugin=protoc-gen-mypy_grpc={bin_dir / 'protoc-gen-mypy_grpc'}",
        f"--mypy_out={out_dir}",
        f"--mypy_grpc_out={out_dir}",
        *map(str, protos),
    ]
    # protoc's plugins chat on stdout; show their output only when they fail.
    finished = subprocess.run(command, capture_output=True, text=True)
    if finished.returncode != 0:
        sys.stderr.write(finished.stdout + finished.stderr)
        raise SystemExit(f"protoc failed with exit status {finished.returncode}")
    return sorted((out_dir / "hashcheck" / "v1").glob("*_pb2*"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only compare")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as scratch:
        fresh = generate(Path(scratch))
        fresh_names = {path.name for path in fresh}
        committed = {
            path.name
            for path in PACKAGE_DIR.iterdir()
            if path.name.endswith(GENERATED_SUFFIXES)
        }

        if args.check:
            stale = sorted(
                name
                for name in fresh_names | committed
                if name not in committed
                or name not in fresh_names
                or not filecmp.cmp(
                    PACKAGE_DIR / name, Path(scratch, "hashcheck", "v1", name), False
                )
            )
            if stale:
                print(
                    "Generated code in client/hashcheck/v1/ is stale against proto/: "
                    + ", ".join(stale)
                    + ". Run: python scripts/protos.py",
                    file=sys.stderr,
                )
                return 1
            return 0

        for name in committed - fresh_names:
            (PACKAGE_DIR / name).unlink()
        for path in fresh:
            shutil.copyfile(path, PACKAGE_DIR / path.name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
