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
from hashcheck_server.withdrawals import read_events
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
        assert overlap == {
            "staged": 12,
            "held_back": 2,
            "block:police": 4,
            "allow:known-good": 0,
        }

        store.promote("delta-12-03", into="police")

        hits = _hits(store, new)
        assert sorted(hits) == list(range(2, 10))
        assert hits[2] == (ListMatch("police", "A1"),)
        assert [s.record.name for s in store.lists()] == ["known-good", "police"]


def test_staged_shows_an_algorithm_whose_hashes_were_all_held_back(
    data_dir: Path,
) -> None:
    benign = random_hashes(3, seed=9)
    with HashStore.open(data_dir, create=True) as store:
        store.import_entries("known-good", [md5_entries(benign)], kind=layout.ALLOW)
        store.import_entries("page-1", [md5_entries(benign[:2])], staged=True)
        store.import_entries("page-1", [md5_entries(benign[2:])], staged=True)

        overlap = store.staged_overlap("page-1")
        store.promote("page-1")
        promoted = store.list_summary("page-1").record

    assert overlap[Algorithm.MD5] == {
        "staged": 0,
        "held_back": 3,
        "allow:known-good": 0,
    }
    assert promoted.held_back == {}


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


def _ids(
    hashes: np.ndarray, first: int = 0
) -> dict[str, tuple[tuple[Algorithm, bytes]]]:
    return {
        str(first + n): ((Algorithm.MD5, row.tobytes()),)
        for n, row in enumerate(hashes)
    }


def test_promote_into_live_list_moves_record_ids(data_dir: Path) -> None:
    live, staged = random_hashes(3, seed=11), random_hashes(3, seed=12)
    with HashStore.open(data_dir, create=True) as store:
        store.import_entries("ncmec", [md5_entries(live, "A1")], record_ids=_ids(live))
        store.import_entries(
            "page-2",
            [md5_entries(staged, "A1")],
            staged=True,
            record_ids=_ids(staged, first=10),
        )
        store.promote("page-2", into="ncmec")
        # A later page withdraws an entry that came in through the staged list.
        report = store.import_entries(
            "ncmec", [], withdrawals=Withdrawals(record_ids=("11",))
        )

        assert report.total("removed") == 1
        assert sorted(_hits(store, staged)) == [0, 2]
        assert sorted(_hits(store, live)) == [0, 1, 2]


def test_staged_tombstones_withdraw_from_live_list_on_promotion(
    data_dir: Path,
) -> None:
    live, named = random_hashes(4, seed=13), random_hashes(1, seed=14)
    with HashStore.open(data_dir, create=True) as store:
        store.import_entries("ncmec", [md5_entries(live, "A1")], record_ids=_ids(live))
        store.import_entries("ncmec", [md5_entries(named, "A2")])
        store.import_entries(
            "page-3",
            [md5_entries(random_hashes(2, seed=15), "A1")],
            staged=True,
            withdrawals=Withdrawals({Algorithm.MD5: named}, record_ids=("1",)),
        )

        kept = store.staged_withdrawals("page-3")
        assert kept.record_ids == ("1",)
        assert kept.hashes[Algorithm.MD5].tolist() == named.tolist()
        assert sorted(_hits(store, live)) == [0, 1, 2, 3]  # not live yet

        store.promote("page-3", into="ncmec")

        assert sorted(_hits(store, live)) == [0, 2, 3]
        assert _hits(store, named) == {}
        again = store.import_entries(
            "ncmec", [], withdrawals=Withdrawals(record_ids=("1",))
        )
        assert again.total("removed") == 0  # the id went with its tombstone


def test_staged_entry_listed_after_a_staged_tombstone_stays(data_dir: Path) -> None:
    hashes = random_hashes(2, seed=16)
    with HashStore.open(data_dir, create=True) as store:
        store.import_entries(
            "ncmec", [md5_entries(hashes, "A1")], record_ids=_ids(hashes)
        )
        store.import_entries(
            "pages", [], staged=True, withdrawals=Withdrawals(record_ids=("0",))
        )
        # The next staged page lists the withdrawn hash again, under a new id.
        store.import_entries(
            "pages",
            [md5_entries(hashes[:1], "B1")],
            staged=True,
            record_ids=_ids(hashes[:1], first=5),
        )
        store.promote("pages", into="ncmec")

        assert _hits(store, hashes) == {
            0: (ListMatch("ncmec", "B1"),),
            1: (ListMatch("ncmec", "A1"),),
        }


def test_staged_tombstones_are_withdrawal_events_on_promotion(data_dir: Path) -> None:
    live = random_hashes(2, seed=17)
    with HashStore.open(data_dir, create=True) as store:
        store.import_entries("ncmec", [md5_entries(live, "A1")], record_ids=_ids(live))
        store.import_entries(
            "page", [], staged=True, withdrawals=Withdrawals(record_ids=("1",))
        )
        store.promote("page", into="ncmec")
        with store.environment.read() as transaction:
            events = read_events(store.environment, transaction, 0.0)

    assert [(e.change, e.list, e.hashes) for e in events] == [
        ("promote", "ncmec", live[1].tobytes())
    ]


def test_retired_staged_list_leaves_no_tombstones(data_dir: Path) -> None:
    live = random_hashes(2, seed=18)
    with HashStore.open(data_dir, create=True) as store:
        store.import_entries("ncmec", [md5_entries(live, "A1")], record_ids=_ids(live))
        store.import_entries(
            "page", [], staged=True, withdrawals=Withdrawals(record_ids=("0",))
        )
        store.retire_list("page")
        store.import_entries("page", [md5_entries(random_hashes(1))], staged=True)
        store.promote("page", into="ncmec")

        assert sorted(_hits(store, live)) == [0, 1]


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


def test_ncmec_import_skips_entries_without_the_chosen_fingerprint(
    tmp_path: Path,
) -> None:
    data = str(tmp_path / "data")
    md5 = random_hashes(1, seed=19)[0].tobytes().hex()
    sha1 = random_hashes(1, 20, seed=20)[0].tobytes().hex()
    page = tmp_path / "page.xml"
    page.write_text(
        "<queryResult><images>"
        + _ncmec_image("1", "A1", md5)
        + "<image><id>2</id><fingerprints><pdna>AAAA</pdna></fingerprints></image>"
        "</images><videos><video><id>3</id><fingerprints>"
        f"<sha1>{sha1}</sha1></fingerprints></video></videos></queryResult>"
    )

    result = _cli(
        "import", "--data", data, "--list", "ncmec", "--algorithm", "md5", str(page)
    )

    assert result.returncode == 0, result.stderr
    assert "md5: 1 added" in _line_for(result.stdout, "md5")
    assert "skipped 2 entries without an md5 fingerprint" in result.stdout
    assert "skipped 2 record(s) without an md5 fingerprint" in result.stderr


def test_staged_command_shows_tombstones_and_promote_applies_them(
    tmp_path: Path,
) -> None:
    data = str(tmp_path / "data")
    md5 = [row.tobytes().hex() for row in random_hashes(3, seed=21)]
    live, page = tmp_path / "live.xml", tmp_path / "page-2.xml"
    live.write_text(
        "<queryResult><images>"
        + "".join(_ncmec_image(str(n), "A1", md5[n]) for n in range(2))
        + "</images></queryResult>"
    )
    page.write_text(
        "<queryResult><images>"
        + _ncmec_image("2", "A1", md5[2])
        + "<deletedImage><id>0</id></deletedImage>"
        "</images></queryResult>"
    )
    _cli("import", "--data", data, "--list", "ncmec", str(live))
    _cli("import", "--data", data, "--list", "page-2", "--staged", str(page))

    shown = json.loads(_cli("staged", "--data", data, "page-2").stdout)
    promoted = _cli("promote", "--data", data, "page-2", "--into", "ncmec")

    assert shown["md5"]["staged"] == 1
    assert shown["tombstones"] == {"record_ids": 1, "hashes": {}}
    assert promoted.returncode == 0, promoted.stderr
    with HashStore.open(data, readonly=True) as store:
        assert sorted(_hits(store, random_hashes(3, seed=21))) == [1, 2]
