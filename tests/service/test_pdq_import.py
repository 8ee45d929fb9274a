"""Importing PDQ lists: text, CSV with quality scores, VICS, and --min-quality."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from hashcheck._algorithms import Algorithm
from hashcheck_server.errors import ImportRejected, MalformedInput
from hashcheck_server.formats import read_hash_file
from hashcheck_server.generation import Generation
from hashcheck_server.pdq_quality import hold_back_low_quality
from hashcheck_server.store import HashStore
from pdq_oracle import random_pdq

SERVER_CLI = str(Path(sys.executable).parent / "hashcheck-server")
HASHES = random_pdq(6, np.random.default_rng(41))
HEXES = [row.tobytes().hex() for row in HASHES]


def _csv(rows: list[str]) -> io.BytesIO:
    return io.BytesIO(("\n".join(rows) + "\n").encode())


def test_csv_reads_pdq_quality_scores() -> None:
    rows = ["pdq,quality,filename"]
    rows += [
        f"{digits},{q},f{n}.jpg"
        for n, (digits, q) in enumerate(
            zip(HEXES, [100, 49, "", 50, 0, 7], strict=True)
        )
    ]

    parsed = read_hash_file(_csv(rows), format="csv")

    part = parsed.by_algorithm[Algorithm.PDQ]
    assert part.qualities is not None
    assert part.qualities.tolist() == [100, 49, -1, 50, 0, 7]
    assert part.hashes.tobytes() == HASHES.tobytes()


def test_csv_names_a_bad_quality_score_as_a_problem() -> None:
    rows = ["hash,PDQ Quality", f"{HEXES[0]},high", f"{HEXES[1]},101"]

    with pytest.raises(MalformedInput) as raised:
        read_hash_file(_csv(rows), format="csv", algorithm=Algorithm.PDQ)

    assert raised.value.total == 2
    assert "quality must be a whole number from 0 to 100" in str(raised.value)


def test_csv_without_quality_column_has_no_scores() -> None:
    parsed = read_hash_file(_csv(["PDQ", *HEXES]), format="csv")

    assert parsed.by_algorithm[Algorithm.PDQ].qualities is None


def test_hold_back_low_quality_keeps_unscored_and_good_hashes() -> None:
    rows = ["pdq,quality,category"]
    rows += [f"{d},{q},A1" for d, q in zip(HEXES, [100, 49, "", 50, 0, 7], strict=True)]
    parsed = read_hash_file(_csv(rows), format="csv")

    kept, report = hold_back_low_quality(parsed, 50)

    part = kept.by_algorithm[Algorithm.PDQ]
    assert part.hashes.tobytes() == HASHES[[0, 2, 3]].tobytes()
    assert part.lines.tolist() == [2, 4, 5]
    assert report is not None
    assert (report.kept, report.held_back, report.unscored) == (3, 3, 1)


def test_hold_back_everything_rejects_the_import() -> None:
    rows = ["pdq,quality", f"{HEXES[0]},10", f"{HEXES[1]},20"]
    parsed = read_hash_file(_csv(rows), format="csv")

    with pytest.raises(ImportRejected, match="all 2 PDQ hashes are of quality below"):
        hold_back_low_quality(parsed, 50)


def test_vics_reads_a_nested_pdq_hash() -> None:
    document = {
        "@odata.context": "https://example.invalid/DataModels/2.0.xml/Media",
        "value": [
            {
                "MediaID": 1,
                "Category": 1,
                "Hashes": [{"HashName": "PDQ", "HashValue": HEXES[0]}],
            }
        ],
    }

    parsed = read_hash_file(io.BytesIO(json.dumps(document).encode()), format="vics")

    assert parsed.by_algorithm[Algorithm.PDQ].hashes.tobytes() == HASHES[0].tobytes()


def _import(*arguments: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [SERVER_CLI, "--log-format", "text", "import", *arguments],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_import_min_quality_reports_what_it_held_back(tmp_path: Path) -> None:
    listing = tmp_path / "pdq.csv"
    scores = [100, 49, "", 50, 0, 7]
    listing.write_text(
        "pdq,quality\n"
        + "".join(f"{d},{q}\n" for d, q in zip(HEXES, scores, strict=True))
    )
    data = tmp_path / "data"

    imported = _import(
        "--data", str(data), "--list", "police", "--min-quality", "50", str(listing)
    )

    assert imported.returncode == 0, imported.stderr
    assert "pdq: 3 added" in imported.stdout
    assert (
        "pdq: 3 hash(es) below quality 50 held back (not imported); 3 kept, of "
        "which 1 without a quality score" in imported.stdout
    )
    with HashStore.open(data, readonly=True) as store:
        generation = Generation.load(store.environment)
        try:
            hits = generation.check(Algorithm.PDQ, HASHES.tobytes(), max_distance=0)
        finally:
            generation.close()
    assert hits.positions.tolist() == [0, 2, 3]


def test_import_text_pdq_list_by_algorithm(tmp_path: Path) -> None:
    listing = tmp_path / "pdq.txt"
    listing.write_text("\n".join(HEXES) + "\n")

    imported = _import(
        "--data",
        str(tmp_path / "data"),
        "--list",
        "police",
        "--algorithm",
        "pdq",
        str(listing),
    )

    assert imported.returncode == 0, imported.stderr
    assert "pdq: 6 added" in imported.stdout
