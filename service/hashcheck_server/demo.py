"""The embedded demo: a store of synthetic hashes plus a folder of harmless samples.

Nothing here is real. The "police" list is 1.4 million random MD5 values from a
seeded generator; the sample files are generated text and PNG images (colour
gradients). A few samples are put on the demo lists, so that scanning the
sample folder shows hits, and the rest are misses:

    sample-01.txt ... sample-08.txt   text; 01-03 listed
    gradient-1.png ... gradient-4.png images; 1 and 2 listed

`expected-hits.json` in the data directory names the hits a scan must report.
"""

from __future__ import annotations

import hashlib
import json
import struct
import zlib
from pathlib import Path

import numpy as np

from hashcheck._algorithms import Algorithm
from hashcheck_server.store import Entries, HashStore

__all__ = ["build_demo"]

_SEED = 20190101
_TEXT_SAMPLES = 8
_IMAGE_SAMPLES = 4

#: (file name, list, category, algorithms the list holds it by)
_LISTED = (
    ("sample-01.txt", "demo-police", "baseline", (Algorithm.MD5,)),
    ("sample-02.txt", "demo-police", "baseline", (Algorithm.MD5,)),
    ("sample-03.txt", "demo-hotline", "A1", (Algorithm.SHA1, Algorithm.SHA256)),
    ("gradient-1.png", "demo-hotline", "B2", (Algorithm.SHA256,)),
    ("gradient-2.png", "demo-police", "baseline", (Algorithm.MD5,)),
    ("gradient-2.png", "demo-hotline", "A1", (Algorithm.MD5,)),
)


def build_demo(data: Path, samples: Path, synthetic_hashes: int = 1_400_000) -> str:
    """Write the samples and import the demo lists; returns a summary."""
    files = _write_samples(samples)
    digests = {name: _digests(path) for name, path in files.items()}

    with HashStore.open(data, create=True) as store:
        police = _synthetic_md5(synthetic_hashes)
        listed_police = _listed(digests, "demo-police")
        store.import_entries(
            "demo-police",
            [Entries.graded_alike(Algorithm.MD5, police, "baseline"), *listed_police],
            source="synthetic demo data",
            description="Random MD5 values standing in for a police list.",
            replace=True,
        )
        store.import_entries(
            "demo-hotline",
            _listed(digests, "demo-hotline"),
            source="synthetic demo data",
            description="Hashes of generated sample files, graded like a hotline list.",
            replace=True,
        )

    expected = _expected_hits(files, digests)
    (data / "expected-hits.json").write_text(json.dumps(expected, indent=2) + "\n")
    return (
        f"demo store in {data}: demo-police ({synthetic_hashes} synthetic MD5 "
        "+ samples), "
        f"demo-hotline; {len(files)} sample files in {samples}, "
        f"{len({hit['path'] for hit in expected})} of them listed"
    )


def _synthetic_md5(count: int) -> np.ndarray:
    generator = np.random.default_rng(_SEED)
    return generator.integers(0, 256, size=(count, 16), dtype=np.uint8)


def _write_samples(samples: Path) -> dict[str, Path]:
    samples.mkdir(parents=True, exist_ok=True)
    files: dict[str, Path] = {}
    for number in range(1, _TEXT_SAMPLES + 1):
        path = samples / f"sample-{number:02d}.txt"
        path.write_text(
            f"HashCheck demo sample {number}.\n"
            "This file is harmless generated text; "
            "its hashes stand in for a listed file.\n"
        )
        files[path.name] = path
    for number in range(1, _IMAGE_SAMPLES + 1):
        path = samples / f"gradient-{number}.png"
        path.write_bytes(_gradient_png(number))
        files[path.name] = path
    return files


def _gradient_png(seed: int, size: int = 64) -> bytes:
    """A small RGB colour gradient as a PNG, different for every seed."""
    ramp = np.arange(size, dtype=np.uint16) * 255 // (size - 1)
    red = np.broadcast_to(ramp[None, :], (size, size))
    green = np.broadcast_to(ramp[:, None], (size, size))
    blue = np.full((size, size), (seed * 53) % 256)
    pixels = np.stack([red, green, blue], axis=2).astype(np.uint8)
    scanlines = b"".join(b"\x00" + row.tobytes() for row in pixels)

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body))
            + kind
            + body
            + struct.pack(">I", zlib.crc32(kind + body))
        )

    header = struct.pack(">IIBBBBB", size, size, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(scanlines, 9))
        + chunk(b"IEND", b"")
    )


def _digests(path: Path) -> dict[Algorithm, bytes]:
    content = path.read_bytes()
    return {
        Algorithm.MD5: hashlib.md5(content).digest(),
        Algorithm.SHA1: hashlib.sha1(content).digest(),
        Algorithm.SHA256: hashlib.sha256(content).digest(),
    }


def _listed(
    digests: dict[str, dict[Algorithm, bytes]], list_name: str
) -> list[Entries]:
    entries = []
    for name, listed_on, category, algorithms in _LISTED:
        if listed_on != list_name:
            continue
        for algorithm in algorithms:
            row = np.frombuffer(digests[name][algorithm], dtype=np.uint8).reshape(1, -1)
            entries.append(Entries.graded_alike(algorithm, row, category))
    return entries


def _expected_hits(
    files: dict[str, Path], digests: dict[str, dict[Algorithm, bytes]]
) -> list[dict[str, object]]:
    hits: dict[tuple[str, Algorithm], list[str]] = {}
    for name, list_name, _, algorithms in _LISTED:
        for algorithm in algorithms:
            hits.setdefault((name, algorithm), []).append(list_name)
    return [
        {
            "path": str(files[name]),
            "algorithm": algorithm.value,
            "hash": digests[name][algorithm].hex(),
            "lists": sorted(lists),
        }
        for (name, algorithm), lists in sorted(
            hits.items(), key=lambda item: (item[0][0], item[0][1].value)
        )
    ]
