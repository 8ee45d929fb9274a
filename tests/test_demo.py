"""The demo (the README's first command) serves, and its scan finds the samples."""

from __future__ import annotations

import json
import os
import socket
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def test_demo_scan_reports_exactly_the_listed_samples(tmp_path: Path) -> None:
    environment = {
        **os.environ,
        "HASHCHECK_DEMO_DIR": str(tmp_path),
        "HASHCHECK_DEMO_LISTEN": f"127.0.0.1:{_free_port()}",
        "HASHCHECK_DEMO_METRICS_PORT": str(_free_port()),
        "HASHCHECK_DEMO_NO_WAIT": "1",
    }

    result = subprocess.run(
        [str(ROOT / "scripts" / "demo")],
        env=environment,
        capture_output=True,
        text=True,
        timeout=300,
    )

    assert result.returncode == 0, result.stderr
    reported = [
        json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")
    ]
    expected = json.loads((tmp_path / "store" / "expected-hits.json").read_text())
    assert sorted(
        (hit["path"], hit["algorithm"], hit["hash"], sorted(hit["lists"]))
        for hit in reported
    ) == sorted(
        (hit["path"], hit["algorithm"], hit["hash"], hit["lists"]) for hit in expected
    )
    assert len(expected) == 6
