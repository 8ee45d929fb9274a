"""Lists that can be trusted: allow lists, staging, tombstones, real formats."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from hashcheck._algorithms import Algorithm
from hashcheck_server import layout
from hashcheck_server.errors import ImportRejected
from hashcheck_server.generation import Generation, ListMatch
from hashcheck_server.store import HashStore, Withdrawals
from synthetic import md5_entries, random_hashes

SERVER_CLI = str(Path(sys.executable).parent / "hashcheck-server")


def _hits(store: HashStore, batch: np.ndarray) -> dict[int, tuple[ListMatch, ...]]:
    generation = Generation.load(store.environment)
    try:
        hits = generation.check(Algorithm.MD5, np.ascontiguousarray(batch).tobytes())
        return {
            int(position): hits.provenances[provenance]
            for position, provenance in zip(
                hits.positions, hits.provenance_of, strict=True
            )
        }
    finally:
        generation.close()


def test_allow_listed_hash_is_held_back_and_never_hits(data_dir: Path) -> None:
    benign = random_hashes(5, seed=1)  # say, stock images of a blogging platform
    listed = random_hashes(20, seed=2)
    with HashStore.open(data_dir, create=True) as store:
        store.import_entries("known-good", [md5_entries(benign)], kind=layout.ALLOW)
        report = store.import_entries(
            "other", [md5_entries(np.concatenate([listed, benign]), "other")]
        )

        assert report.total("held_back") == 5
        assert sorted(_hits(store, np.concatenate([listed, benign]))) == list(range(20))


def test_allow_list_imported_later_stops_existing_hits(data_dir: Path) -> None:
    listed = random_hashes(10, seed=3)
    with HashStore.open(data_dir, create=True) as store:
        store.import_entries("police", [md5_entries(listed, "A1")])
        store.import_entries("known-good", [md5_entries(listed[:3])], kind=layout.ALLOW)

        assert sorted(_hits(store, listed)) == list(range(3, 10))


def test_list_kind_cannot_change(data_dir: Path) -> None:
    with HashStore.open(data_dir, create=True) as store:
        store.import_entries(
            "known-good", [md5_entries(random_hashes(2))], kind=layout.ALLOW
        )
        with pytest.raises(ImportRejected, match="allow list"):
            store.import_entries("known-good", [md5_entries(random_hashes(2, seed=4))])


def test_staged_list_does_not_hit_until_promoted(data_dir: Path) -> None:
    live, new = random_hashes(10, seed=5), random_hashes(10, seed=6)
    benign = new[:2]
    with HashStore.open(data_dir, create=True) as store:
        store.import_entries("police", [md5_entries(live)])
        store.import_entries("known-good", [md5_entries(benign)], kind=layout.ALLOW)
        store.import_entries(
            "delta-12-03",
            [md5_entries(np.concatenate([new, live[:4]]), "A1")],
            staged=True,
        )

        assert sorted(_hits(store, new)) == []
        overlap = store.staged_overlap("delta-12-03")[Algorithm.MD5]
        # The two benign hashes were held back at import, so none overlap.
        assert overlap == {"staged": 12, "block:police": 4, "allow:known-good": 0}

        store.promote("delta-12-03", into="police")

        hits = _hits(store, new)
        assert sorted(hits) == list(range(2, 10))
        assert hits[2] == (ListMatch("police", "A1"),)
        assert [s.record.name for s in store.lists()] == ["known-good", "police"]


def test_promote_staged_list_itself(data_dir: Path) -> None:
    new = random_hashes(3, seed=7)
    with HashStore.open(data_dir, create=True) as store:
        store.import_entries("interpol", [md5_entries(new)], staged=True)
        store.promote("interpol")

        assert sorted(_hits(store, new)) == [0, 1, 2]


def test_staging_into_live_list_is_refused(data_dir: Path) -> None:
    with HashStore.open(data_dir, create=True) as store:
        store.import_entries("police", [md5_entries(random_hashes(2))])
        with pytest.raises(ImportRejected, match="promote"):
            store.import_entries("police", [md5_entries(random_hashes(1))], staged=True)


def test_tombstone_by_id_withdraws_recorded_hashes(data_dir: Path) -> None:
    hashes = random_hashes(3, seed=8)
    record_ids = {
        str(n): ((Algorithm.MD5, row.tobytes()),) for n, row in enumerate(hashes)
    }
    with HashStore.open(data_dir, create=True) as store:
        store.import_entries(
            "ncmec", [md5_entries(hashes, "A1")], record_ids=record_ids
        )
        report = store.import_entries(
            "ncmec", [], withdrawals=Withdrawals(record_ids=("1",))
        )

        assert report.total("removed") == 1
        assert sorted(_hits(store, hashes)) == [0, 2]


VICS_2_CONTEXT = "http://github.com/ICMEC/ProjectVic/DataModels/2.0.xml/$metadata#Media"


def _ncmec_image(entry_id: str, classification: str, md5: str) -> str:
    return (
        f"<image><id>{entry_id}</id><classification>{classification}"
        f"</classification><fingerprints><md5>{md5}</md5></fingerprints></image>"
    )


def _cli(*arguments: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [SERVER_CLI, "--log-format", "text", *arguments],
        capture_output=True,
        text=True,
        timeout=120,
    )


def _line_for(output: str, algorithm: str) -> str:
    return next(
        line for line in output.splitlines() if line.strip().startswith(algorithm)
    )


def test_real_formats_import_with_right_counts(tmp_path: Path) -> None:
    data = str(tmp_path / "data")
    md5 = [row.tobytes().hex() for row in random_hashes(6, seed=9)]
    sha1 = [row.tobytes().hex() for row in random_hashes(6, 20, seed=10)]

    vics = tmp_path / "export.json"
    vics.write_text(
        json.dumps(
            {
                "@odata.context": VICS_2_CONTEXT,
                "value": [
                    {"MediaID": 1, "Category": 1, "MD5": md5[0], "SHA1": sha1[0]},
                    {"MediaID": 2, "Category": 2, "MD5": md5[1]},
                    {"MediaID": 3, "Category": 1, "MD5": md5[0]},
                    {
                        "MediaID": 4,
                        "Category": 1,
                        "Hashes": [{"HashName": "SHA1", "HashValue": sha1[1]}],
                    },
                ],
            }
        )
    )
    ncmec = tmp_path / "page-1.xml"
    ncmec.write_text(
        "<queryResult><images>"
        + _ncmec_image("10", "A1", md5[2])
        + _ncmec_image("11", "A2", md5[3])
        + "<deletedImage><id>10</id></deletedImage>"
        "</images></queryResult>"
    )
    icse = tmp_path / "icse.csv"
    header = (
        "MD5;SHA1;PhotoDNA;Image ID;Is distributed;Victim identified;"
        "Offender identified;Series name;Number of submissions;File Available;"
        "Media Type;Baseline"
    )
    icse.write_text(
        header
        + "\n"
        + f"{md5[4]};{sha1[2]};;1;1;0;0;s;1;1;image;1\n"
        + f"{md5[5]};;;2;1;0;0;s;1;1;image;0\n"
    )

    from_vics = _cli("import", "--data", data, "--list", "vics", str(vics))
    from_ncmec = _cli("import", "--data", data, "--list", "ncmec", str(ncmec))
    from_icse = _cli(
        "import", "--data", data, "--list", "icse", "--format", "icse", str(icse)
    )

    assert from_vics.returncode == 0, from_vics.stderr
    assert "md5: 2 added" in _line_for(from_vics.stdout, "md5")
    assert "sha1: 2 added" in _line_for(from_vics.stdout, "sha1")
    assert from_ncmec.returncode == 0, from_ncmec.stderr
    assert "md5: 2 added" in _line_for(from_ncmec.stdout, "md5")
    assert "1 removed" in _line_for(from_ncmec.stdout, "md5")
    assert from_icse.returncode == 0, from_icse.stderr
    assert "md5: 2 added" in _line_for(from_icse.stdout, "md5")
    assert "sha1: 1 added" in _line_for(from_icse.stdout, "sha1")
    shown = json.loads(_cli("show", "--data", data, "icse").stdout)
    assert shown["by_algorithm"]["md5"] == {"baseline": 1, "non-baseline": 1}
