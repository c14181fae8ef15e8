"""The console in deploy/: its own compose service and Kubernetes Deployment + Service,
pointed at the services, probed on its health endpoint; the image's entry point runs it."""

from __future__ import annotations

from pathlib import Path

import yaml

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def test_compose_runs_the_console_against_the_services():
    svc = yaml.safe_load((DEPLOY / "compose.yaml").read_text())["services"]["console"]
    assert svc["command"] == ["console"]
    env = svc["environment"]
    assert env["CONSOLE_SETTLEMENT_ADDRESS"] == "settlement:50053"
    assert env["CONSOLE_BILLING_ADDRESS"] == "billing:50051"
    assert env["CONSOLE_CLEARING_ADDRESS"] == "clearing:50052"
    assert "/healthz" in " ".join(svc["healthcheck"]["test"])


def test_kubernetes_deployment_and_service_of_the_console():
    kustomization = yaml.safe_load((DEPLOY / "k8s" / "kustomization.yaml").read_text())
    assert {"console/deployment.yaml", "console/service.yaml"} <= set(kustomization["resources"])
    config = next(c for c in kustomization["configMapGenerator"] if c["name"] == "console-config")
    literals = dict(item.split("=", 1) for item in config["literals"])
    assert literals["CONSOLE_HOST"] == "0.0.0.0" and literals["CONSOLE_PORT"] == "8080"
    dep = yaml.safe_load((DEPLOY / "k8s" / "console" / "deployment.yaml").read_text())
    (container,) = dep["spec"]["template"]["spec"]["containers"]
    assert container["args"] == ["console"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/healthz"
    assert dep["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"] is True
    secret_env = {e["name"] for e in container["env"]}
    assert "CONSOLE_SESSION_SECRET" in secret_env
    svc = yaml.safe_load((DEPLOY / "k8s" / "console" / "service.yaml").read_text())
    assert svc["spec"]["ports"][0]["port"] == 8080
    assert svc["spec"]["selector"].items() <= dep["spec"]["template"]["metadata"]["labels"].items()


def test_the_image_entry_point_knows_the_console():
    assert "console) shift; exec python -m services.console" in (
        DEPLOY / "entrypoint.sh").read_text()
