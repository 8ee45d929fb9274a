"""PDQ in the SDK and `hashcheck scan`: a changed copy of a listed image is found.

Every image here is generated: smooth random colour fields and stripes made
with numpy. Their PDQ hashes are listed on a synthetic list of a real server
started for the test; nothing is a real image or a real list entry.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from prometheus_client import CollectorRegistry

import hashcheck
from hashcheck import Algorithm, Client, pdq_hash_file
from hashcheck_server.server import RunningServer, ServerConfig, start_server

SERVER_CLI = str(Path(sys.executable).parent / "hashcheck-server")


def generated_image(seed: int, size: tuple[int, int] = (640, 480)) -> Image.Image:
    """A harmless picture: a smooth random colour field with a few stripes."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, size=(6, 8, 3), dtype=np.uint8)
    field = Image.fromarray(coarse).resize(size, Image.Resampling.BICUBIC)
    pixels = np.asarray(field).copy()
    for _ in range(4):
        row = int(rng.integers(0, size[1] - 40))
        pixels[row : row + 20] = rng.integers(0, 256, size=3, dtype=np.uint8)
    return Image.fromarray(pixels)


@pytest.fixture
def listed_image(tmp_path: Path) -> Path:
    path = tmp_path / "original.png"
    generated_image(seed=1).save(path)
    return path


@pytest.fixture
def pdq_server(tmp_path: Path, listed_image: Path) -> Iterator[RunningServer]:
    """A real server whose list `police` holds the PDQ hash of `listed_image`."""
    listed = pdq_hash_file(listed_image)
    assert listed is not None and listed.is_usable
    listing = tmp_path / "police-pdq.txt"
    listing.write_text(f"pdq:{listed.hex}\n")
    data = tmp_path / "data"
    imported = subprocess.run(
        [SERVER_CLI, "--log-format", "text", "import", "--data", str(data)]
        + ["--list", "police", "--category", "A1", str(listing)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert imported.returncode == 0, imported.stderr

    config = ServerConfig(data=data, listen="127.0.0.1:0", grace_seconds=1.0)
    running = start_server(config, CollectorRegistry())
    yield running
    running.stop(grace_seconds=1.0)


def _scanned_folder(tmp_path: Path, listed_image: Path) -> Path:
    folder = tmp_path / "uploads"
    folder.mkdir()
    with Image.open(listed_image) as original:
        original.resize((320, 240), Image.Resampling.LANCZOS).save(
            folder / "copy.jpg", quality=70
        )
    generated_image(seed=2).save(folder / "other.png")
    (folder / "notes.txt").write_text("not an image\n")
    return folder


def test_pdq_hash_file_hashes_images_and_skips_other_files(
    tmp_path: Path, listed_image: Path
) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("not an image\n")

    pdq = pdq_hash_file(listed_image)

    assert pdq is not None
    assert len(pdq.hash) == 32 and pdq.is_usable
    assert pdq_hash_file(text) is None
    with pytest.raises(OSError):
        pdq_hash_file(tmp_path / "missing.png")


def test_pdq_of_a_resized_jpeg_copy_is_near(tmp_path: Path, listed_image: Path) -> None:
    folder = _scanned_folder(tmp_path, listed_image)
    original, copy, other = (
        pdq_hash_file(path)
        for path in (listed_image, folder / "copy.jpg", folder / "other.png")
    )
    assert original is not None and copy is not None and other is not None

    def distance(a: bytes, b: bytes) -> int:
        return int(
            np.unpackbits(np.frombuffer(a, np.uint8) ^ np.frombuffer(b, np.uint8)).sum()
        )

    assert distance(original.hash, copy.hash) <= 31
    assert distance(original.hash, other.hash) > 31


def test_sdk_check_reports_pdq_distance(
    pdq_server: RunningServer, tmp_path: Path, listed_image: Path
) -> None:
    folder = _scanned_folder(tmp_path, listed_image)
    copy = pdq_hash_file(folder / "copy.jpg")
    assert copy is not None

    with Client(f"127.0.0.1:{pdq_server.port}") as client:
        result = client.check([copy.hash], "pdq")
        strict = client.check([copy.hash], "pdq", max_distance=5)
        info = client.info()

    (hit,) = result.hits
    assert hit.algorithm is Algorithm.PDQ and hit.list_names == ("police",)
    assert hit.distance is not None and 0 < hit.distance <= 31
    assert hit.hash == copy.hash
    assert hit.distance > 5 and not strict.hits
    assert (info.default_max_distance, info.max_distance_cap) == (31, 31)


def test_scan_reports_a_changed_copy_of_a_listed_image_with_its_distance(
    pdq_server: RunningServer, tmp_path: Path, listed_image: Path, run_cli: object
) -> None:
    folder = _scanned_folder(tmp_path, listed_image)

    completed = run_cli("scan", "--server", f"127.0.0.1:{pdq_server.port}", str(folder))  # type: ignore[operator]

    assert completed.returncode == 1, completed.stderr
    (record,) = [json.loads(line) for line in completed.stdout.splitlines()]
    assert record["path"] == str(folder / "copy.jpg")
    assert record["algorithm"] == "pdq"
    assert record["lists"] == ["police"]
    assert record["matches"] == [{"list": "police", "category": "A1"}]
    assert 0 < record["distance"] <= 31


def test_scan_without_pdq_misses_the_copy(
    pdq_server: RunningServer, tmp_path: Path, listed_image: Path, run_cli: object
) -> None:
    folder = _scanned_folder(tmp_path, listed_image)

    completed = run_cli(  # type: ignore[operator]
        "scan", "--no-pdq", "--server", f"127.0.0.1:{pdq_server.port}", str(folder)
    )

    assert completed.returncode == 0, completed.stderr
    assert completed.stdout == ""


def test_scan_sends_no_pdq_to_a_server_without_it(
    target: str, fake: object, tmp_path: Path, listed_image: Path, run_cli: object
) -> None:
    folder = _scanned_folder(tmp_path, listed_image)

    automatic = run_cli("scan", "--server", target, str(folder))  # type: ignore[operator]
    required = run_cli("scan", "--pdq", "--server", target, str(folder))  # type: ignore[operator]

    assert automatic.returncode == 0, automatic.stderr
    assert required.returncode == 2
    assert "does not answer PDQ hashes" in required.stderr


_WITHOUT_EXTRA = """
import importlib.abc
import sys

BLOCKED = {"numpy", "PIL", "pdqhash"}


class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{name} is blocked for this test")
        return None


sys.meta_path.insert(0, Block())

import hashcheck
from hashcheck._cli import main

try:
    hashcheck.pdq_hash_file(sys.argv[2])
except ImportError as error:
    print(error)
print("scan", main(["scan", "--server", sys.argv[1], sys.argv[2]]))
print("scan --pdq", main(["scan", "--pdq", "--server", sys.argv[1], sys.argv[2]]))
"""


def test_sdk_and_scan_without_the_pdq_extra(
    target: str, fake: object, listed_image: Path
) -> None:
    completed = subprocess.run(
        [sys.executable, "-c", _WITHOUT_EXTRA, target, str(listed_image)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert completed.stdout.splitlines() == [
        "PDQ hashing needs the optional extra: pip install 'hashcheck[pdq]' "
        "(pdqhash, numpy and Pillow).",
        "scan 0",
        "scan --pdq 2",
    ], completed.stderr
    assert "hashcheck[pdq]" in completed.stderr
    assert hashcheck.PdqHash(b"\x00" * 32, 49).is_usable is False
