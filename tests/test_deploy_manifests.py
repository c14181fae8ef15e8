"""Static checks of deploy/ (compose, kustomize base, Dockerfile).

Parse-only: no Docker engine or cluster is needed.
"""

from __future__ import annotations

import importlib
import os
import re
import shlex
from pathlib import Path

import pytest
import yaml
from sqlalchemy.engine import make_url

from shared import db_roles

REPO = Path(__file__).resolve().parent.parent
DEPLOY = REPO / "deploy"
K8S = DEPLOY / "k8s"

# service -> (env prefix, gRPC port)
SERVICES = {
    "billing": ("BILLING_", 50051),
    "clearing": ("CLEARING_", 50052),
    "settlement": ("SETTLEMENT_", 50053),
}
PAYOUT_SIM = ("payout-simulator", "PAYOUT_SIM_", 50054)
HEALTH_PORTS = {"billing": 50061, "clearing": 50062, "settlement": 50063}
# The metrics ports the manifests expose are the services' own defaults.
METRICS_PORTS = {
    name: importlib.import_module(f"services.{name}.settings").__dict__[
        f"{name.capitalize()}Settings"
    ].model_fields["metrics_port"].default
    for name in SERVICES
}


def load_docs(path: Path) -> list[dict]:
    with path.open(encoding="utf-8") as fh:
        return [d for d in yaml.safe_load_all(fh) if d is not None]


def load_one(path: Path) -> dict:
    docs = load_docs(path)
    assert len(docs) == 1, f"{path}: expected one YAML document, got {len(docs)}"
    assert isinstance(docs[0], dict), f"{path}: top level is not a mapping"
    return docs[0]


def seconds(value: object) -> float:
    """Compose durations ('15s', '1m30s') or plain numbers -> seconds."""
    if isinstance(value, (int, float)):
        return float(value)
    parts = re.findall(r"(\d+(?:\.\d+)?)(h|ms|m|s|us)", str(value))
    assert parts, f"unparseable duration {value!r}"
    scale = {"h": 3600, "m": 60, "s": 1, "ms": 1e-3, "us": 1e-6}
    return sum(float(n) * scale[u] for n, u in parts)


# ---------------------------------------------------------------- all YAML ---


def test_every_yaml_file_under_deploy_parses() -> None:
    files = sorted([*DEPLOY.rglob("*.yaml"), *DEPLOY.rglob("*.yml")])
    # compose + kustomization + namespace + secret example + 3 x 3 per service
    assert len(files) >= 13, [str(f) for f in files]
    for f in files:
        docs = load_docs(f)
        assert docs, f"{f} has no YAML documents"
        assert all(isinstance(d, dict) for d in docs), f"{f}: non-mapping document"


# ----------------------------------------------------------------- compose ---


@pytest.fixture(scope="module")
def compose() -> dict:
    return load_one(DEPLOY / "compose.yaml")


def depends(svc: dict) -> dict[str, str]:
    """depends_on in either list or mapping form -> {name: condition}."""
    dep = svc.get("depends_on") or {}
    if isinstance(dep, list):
        return {name: "service_started" for name in dep}
    return {name: (spec or {}).get("condition", "service_started") for name, spec in dep.items()}


def environment(svc: dict) -> dict[str, str]:
    env = svc.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: str(v) for k, v in env.items()}


def published(svc: dict) -> set[int]:
    """Container ports of the `ports:` short syntax ('[ip:]host:container')."""
    out = set()
    for p in svc.get("ports") or []:
        out.add(int(p["target"]) if isinstance(p, dict) else int(str(p).rsplit(":", 1)[-1]))
    return out


def test_compose_postgres_has_healthcheck(compose: dict) -> None:
    pg = compose["services"]["postgres"]
    assert str(pg["image"]).startswith("postgres:16")
    test = pg["healthcheck"]["test"]
    assert "pg_isready" in (" ".join(test) if isinstance(test, list) else test)
    # the init script it mounts must exist
    for vol in pg.get("volumes", []):
        src = str(vol).split(":", 1)[0]
        if src.startswith("."):
            assert (DEPLOY / src).exists(), f"compose mounts missing file {src}"


@pytest.mark.parametrize("name", SERVICES)
def test_compose_migration_service(compose: dict, name: str) -> None:
    prefix, _ = SERVICES[name]
    mig = compose["services"][f"{name}-migrate"]
    assert mig["command"] == [name, "migrate"]
    assert depends(mig).get("postgres") == "service_healthy"
    assert str(mig.get("restart", "no")) == "no", "a one-shot job must not restart"
    env = environment(mig)
    # It migrates as the migration role, and holds no other.
    url = make_url(env[f"{prefix}MIGRATION_DATABASE_URL"])
    assert url.drivername == "postgresql+asyncpg" and url.username == f"{name}_migrator"
    assert f"{prefix}DATABASE_URL" not in env


@pytest.mark.parametrize("name", SERVICES)
def test_compose_service_waits_for_its_migration(compose: dict, name: str) -> None:
    prefix, port = SERVICES[name]
    svc = compose["services"][name]
    assert svc["command"] == [name, "serve"]
    assert depends(svc).get(f"{name}-migrate") == "service_completed_successfully"
    env = environment(svc)
    assert env[f"{prefix}HOST"] == "0.0.0.0"
    assert int(env[f"{prefix}PORT"]) == port
    assert port in published(svc)
    # The same database as the migration that prepared it, as the runtime role; the
    # migration role's URL is not in the serving container.
    mig_env = environment(compose["services"][f"{name}-migrate"])
    runtime = make_url(env[f"{prefix}DATABASE_URL"])
    migrator = make_url(mig_env[f"{prefix}MIGRATION_DATABASE_URL"])
    assert runtime.username == f"{name}_runtime"
    assert (runtime.host, runtime.port, runtime.database) == (
        migrator.host, migrator.port, migrator.database)
    assert f"{prefix}MIGRATION_DATABASE_URL" not in env
    # Development passwords: each role's name, as postgres/init.sql sets them.
    assert runtime.password == runtime.username and migrator.password == migrator.username
    assert env[f"{prefix}MIGRATE_ON_START"].lower() == "false"
    # docker must wait longer than the service's own drain before SIGKILL
    assert seconds(svc["stop_grace_period"]) > float(env[f"{prefix}GRACE_PERIOD_S"])


def test_compose_init_sql_is_what_db_roles_generates() -> None:
    """postgres/init.sql creates every service's two roles exactly as shared/db_roles does
    (regenerate: python -m shared.db_roles sql --dev-passwords billing clearing settlement)."""
    script = (DEPLOY / "postgres" / "init.sql").read_text(encoding="utf-8")
    assert script == db_roles.sql_script(list(SERVICES), dev_passwords=True)


def test_compose_peer_addresses_point_at_compose_services(compose: dict) -> None:
    services = compose["services"]
    clearing = environment(services["clearing"])
    settlement = environment(services["settlement"])
    assert clearing["CLEARING_BILLING_ADDRESS"] == "billing:50051"
    assert settlement["SETTLEMENT_CLEARING_ADDRESS"] == "clearing:50052"
    assert settlement["SETTLEMENT_BILLING_ADDRESS"] == "billing:50051"
    assert settlement["SETTLEMENT_PAYOUT_GATEWAY_ADDRESS"] == f"{PAYOUT_SIM[0]}:{PAYOUT_SIM[2]}"
    assert depends(services["settlement"]).get(PAYOUT_SIM[0]) == "service_healthy"


def test_compose_payout_simulator(compose: dict) -> None:
    name, prefix, port = PAYOUT_SIM
    sim = compose["services"][name]
    assert sim["command"][0] == name
    assert int(environment(sim)[f"{prefix}PORT"]) == port
    assert port in published(sim)


def test_compose_healthcheck_dependencies_have_healthchecks(compose: dict) -> None:
    services = compose["services"]
    for name, svc in services.items():
        for dep, cond in depends(svc).items():
            assert dep in services, f"{name} depends on unknown service {dep}"
            if cond == "service_healthy":
                assert "healthcheck" in services[dep], f"{name} waits on {dep} without healthcheck"



def test_compose_console_calls_the_services_over_mutual_tls(compose: dict) -> None:
    """The services require a client certificate from the development CA, so the console
    (all three CONSOLE_TLS_* empty = plaintext) needs the same CA and the tools' pair."""
    services = compose["services"]
    console = services["console"]
    env = environment(console)
    assert "security:/security:ro" in console.get("volumes", [])
    assert env["CONSOLE_TLS_CA_FILE"] == environment(services["billing"])["BILLING_TLS_CA_FILE"]
    assert env["CONSOLE_TLS_CERT_FILE"] == "/security/tool.pem"
    assert env["CONSOLE_TLS_KEY_FILE"] == "/security/tool.key"

# -------------------------------------------------------------- kubernetes ---


@pytest.fixture(scope="module")
def kustomization() -> dict:
    return load_one(K8S / "kustomization.yaml")


@pytest.fixture(scope="module")
def resources(kustomization: dict) -> dict[tuple[str, str], dict]:
    """(kind, name) -> manifest for every resource kustomization.yaml lists."""
    out: dict[tuple[str, str], dict] = {}
    for rel in kustomization["resources"]:
        path = K8S / rel
        assert path.is_file(), f"kustomization lists missing file {rel}"
        for doc in load_docs(path):
            assert doc.get("apiVersion") and doc.get("kind"), f"{rel}: not a k8s object"
            key = (doc["kind"], doc["metadata"]["name"])
            assert key not in out, f"duplicate resource {key}"
            out[key] = doc
    return out


@pytest.fixture(scope="module")
def configmaps(kustomization: dict) -> dict[str, dict[str, str]]:
    out = {}
    for gen in kustomization.get("configMapGenerator", []):
        out[gen["name"]] = dict(lit.split("=", 1) for lit in gen.get("literals", []))
    return out


def test_kustomization_basics(kustomization: dict, resources: dict) -> None:
    assert kustomization["namespace"] == "clearhouse"
    assert ("Namespace", "clearhouse") in resources
    # secrets are never part of the base; the example is kept out of it
    assert "secret.example.yaml" not in kustomization["resources"]
    assert not kustomization.get("secretGenerator")
    assert not [k for k in resources if k[0] == "Secret"]
    # payout simulator is dev-only
    assert not [k for k in resources if "payout" in k[1]]


def test_secret_example_has_the_expected_keys() -> None:
    secret = load_one(K8S / "secret.example.yaml")
    assert secret["kind"] == "Secret" and secret["metadata"]["name"] == "clearhouse-db"
    data = secret.get("stringData") or {}
    assert set(data) == {f"{s}-url" for s in SERVICES} | {f"{s}-migration-url" for s in SERVICES}
    for s in SERVICES:
        assert make_url(data[f"{s}-url"]).username == f"{s}_runtime"
        assert make_url(data[f"{s}-migration-url"]).username == f"{s}_migrator"
    assert all("CHANGE_ME" in v for v in data.values()), "example must hold placeholders only"


def pod_spec(obj: dict) -> dict:
    return obj["spec"]["template"]["spec"]


def assert_non_root(spec: dict, what: str) -> None:
    pod_sc = spec.get("securityContext") or {}
    for c in spec["containers"]:
        sc = {**pod_sc, **(c.get("securityContext") or {})}
        assert sc.get("runAsNonRoot") is True, f"{what}/{c['name']}: runAsNonRoot"
        assert int(sc.get("runAsUser", 0)) != 0, f"{what}/{c['name']}: runAsUser must be non-zero"
        assert sc.get("allowPrivilegeEscalation") is False, f"{what}/{c['name']}"


def assert_db_env(container: dict, name: str, configmaps: dict, *, migrates: bool) -> None:
    """A Deployment's container connects as the runtime role (`<name>-url`), a migrate
    Job's as the migration role (`<name>-migration-url`); neither holds the other's."""
    prefix, _ = SERVICES[name]
    env = {e["name"]: e for e in container.get("env", [])}
    mine, theirs = f"{prefix}DATABASE_URL", f"{prefix}MIGRATION_DATABASE_URL"
    key = f"{name}-url"
    if migrates:
        mine, theirs, key = theirs, mine, f"{name}-migration-url"
    ref = env[mine]["valueFrom"]["secretKeyRef"]
    assert ref == {"name": "clearhouse-db", "key": key}
    assert theirs not in env
    secret_keys = {e["valueFrom"]["secretKeyRef"]["key"] for e in env.values()
                   if e.get("valueFrom", {}).get("secretKeyRef", {}).get("name") == "clearhouse-db"}
    assert secret_keys == {key}, secret_keys
    cm_refs = [
        e["configMapRef"]["name"] for e in container.get("envFrom", []) if "configMapRef" in e
    ]
    assert cm_refs and all(r in configmaps for r in cm_refs), cm_refs


@pytest.mark.parametrize("name", SERVICES)
def test_deployment(name: str, resources: dict, configmaps: dict) -> None:
    prefix, port = SERVICES[name]
    dep = resources[("Deployment", name)]
    assert dep["spec"]["replicas"] == 2
    spec = pod_spec(dep)
    (container,) = spec["containers"]
    assert container["args"] == [name, "serve"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"grpc": port, "metrics": METRICS_PORTS[name]}
    for probe in ("readinessProbe", "livenessProbe"):
        # The plaintext health-only port: probes cannot present a client certificate.
        assert container[probe]["grpc"]["port"] == HEALTH_PORTS[name], f"{name} {probe}"
        assert configmaps[f"{name}-config"][f"{prefix}HEALTH_PORT"] == str(HEALTH_PORTS[name])
    # Liveness must not follow the database (a blip would restart every pod).
    assert container["livenessProbe"]["grpc"]["service"] == "liveness"
    assert "service" not in container["readinessProbe"]["grpc"]
    annotations = dep["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert int(annotations["prometheus.io/port"]) == METRICS_PORTS[name]
    assert_non_root(spec, name)
    assert container["resources"]["requests"] and container["resources"]["limits"]
    assert_db_env(container, name, configmaps, migrates=False)
    # settings the container gets must agree with the manifest
    cfg = {
        k: v for r in container["envFrom"] for k, v in configmaps[r["configMapRef"]["name"]].items()
    }
    assert int(cfg[f"{prefix}PORT"]) == port
    assert int(cfg[f"{prefix}METRICS_PORT"]) == METRICS_PORTS[name]
    assert cfg[f"{prefix}METRICS_HOST"] == "0.0.0.0"
    assert cfg[f"{prefix}HOST"] == "0.0.0.0"
    assert cfg[f"{prefix}MIGRATE_ON_START"].lower() == "false"
    assert spec["terminationGracePeriodSeconds"] > float(cfg[f"{prefix}GRACE_PERIOD_S"])
    # selector must match the pod template
    labels = dep["spec"]["template"]["metadata"]["labels"]
    assert dep["spec"]["selector"]["matchLabels"].items() <= labels.items()


@pytest.mark.parametrize("name", SERVICES)
def test_disruption_budget_and_autoscaler(name: str, resources: dict) -> None:
    pdb = resources[("PodDisruptionBudget", name)]
    assert pdb["spec"]["minAvailable"] == 1
    dep = resources[("Deployment", name)]
    assert pdb["spec"]["selector"]["matchLabels"] == dep["spec"]["selector"]["matchLabels"]
    hpa = resources[("HorizontalPodAutoscaler", name)]
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                             "name": name}
    assert hpa["spec"]["minReplicas"] == dep["spec"]["replicas"] <= hpa["spec"]["maxReplicas"]


@pytest.mark.parametrize("name", SERVICES)
def test_service(name: str, resources: dict) -> None:
    _, port = SERVICES[name]
    svc = resources[("Service", name)]
    assert svc["spec"].get("type", "ClusterIP") == "ClusterIP"
    (p,) = svc["spec"]["ports"]
    assert p["name"] == "grpc" and p["port"] == port
    assert p.get("targetPort") in (port, "grpc")
    pod_labels = resources[("Deployment", name)]["spec"]["template"]["metadata"]["labels"]
    assert svc["spec"]["selector"].items() <= pod_labels.items(), "Service selects no pods"


@pytest.mark.parametrize("name", SERVICES)
def test_migration_job(name: str, resources: dict, configmaps: dict) -> None:
    job = resources[("Job", f"{name}-migrate")]
    assert isinstance(job["spec"]["backoffLimit"], int)
    assert isinstance(job["spec"]["ttlSecondsAfterFinished"], int)
    spec = pod_spec(job)
    assert spec["restartPolicy"] in ("Never", "OnFailure")
    (container,) = spec["containers"]
    assert container["args"] == [name, "migrate"]
    assert (
        container["image"]
        == resources[("Deployment", name)]["spec"]["template"]["spec"]["containers"][0]["image"]
    )
    assert_non_root(spec, f"{name}-migrate")
    assert_db_env(container, name, configmaps, migrates=True)


def test_settlement_peer_addresses_use_k8s_services(configmaps: dict) -> None:
    cfg = configmaps["settlement-config"]
    assert cfg["SETTLEMENT_CLEARING_ADDRESS"] == "clearing:50052"
    assert cfg["SETTLEMENT_BILLING_ADDRESS"] == "billing:50051"
    assert cfg["SETTLEMENT_PAYOUT_GATEWAY_ADDRESS"]
    assert configmaps["clearing-config"]["CLEARING_BILLING_ADDRESS"] == "billing:50051"


# -------------------------------------------------------------- Dockerfile ---


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, args) with comments dropped and continuations joined."""
    text = (DEPLOY / "Dockerfile").read_text(encoding="utf-8")
    lines = [ln for ln in text.splitlines() if not ln.lstrip().startswith("#")]
    joined = re.sub(r"\\\n", " ", "\n".join(lines))
    out = []
    for ln in joined.splitlines():
        if ln.strip():
            instr, _, args = ln.strip().partition(" ")
            out.append((instr.upper(), args.strip()))
    return out


def final_stage() -> list[tuple[str, str]]:
    instrs = dockerfile_instructions()
    last_from = max(i for i, (ins, _) in enumerate(instrs) if ins == "FROM")
    return instrs[last_from:]


def test_dockerfile_runs_as_fixed_non_root_user(resources: dict) -> None:
    users = [args for ins, args in final_stage() if ins == "USER"]
    assert users, "final stage has no USER"
    user = users[-1].split(":")[0]
    assert user.isdigit() and int(user) != 0, f"USER {users[-1]} must be a fixed non-zero uid"
    # k8s runAsUser must be the same uid the image was built for
    for kind, name in resources:
        if kind in ("Deployment", "Job"):
            sc = pod_spec(resources[(kind, name)])["securityContext"]
            assert sc["runAsUser"] == int(user), f"{kind}/{name}"


def test_dockerfile_base_entrypoint_and_copied_files() -> None:
    instrs = dockerfile_instructions()
    bases = [args.split()[0] for ins, args in instrs if ins == "FROM"]
    assert bases and all(b.startswith("python:3.11-slim") for b in bases), bases
    stage = final_stage()
    assert [a for ins, a in stage if ins == "ENTRYPOINT"], "no ENTRYPOINT"
    assert any(ins == "RUN" and "pip install" in a for ins, a in instrs)
    # files copied from deploy/ must exist and be allowed by the dockerignore
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text(encoding="utf-8")
    for ins, args in instrs:
        if ins == "COPY" and "--from" not in args:
            for src in shlex.split(args)[:-1]:
                if src.startswith("deploy/"):
                    assert (REPO / src).is_file(), src
                    assert f"!{src}" in ignore.split(), f"{src} excluded from build context"


def test_entrypoint_script() -> None:
    script = DEPLOY / "entrypoint.sh"
    assert os.access(script, os.X_OK), "entrypoint.sh must be executable"
    text = script.read_text(encoding="utf-8")
    assert text.startswith("#!")
    assert "exec python -m" in text, "python must replace the shell to receive SIGTERM"
    for name in [*SERVICES, PAYOUT_SIM[0]]:
        assert name in text, name


# ----------------------------------------------------------- settings names ---


def deploy_variables() -> dict[str, set[str]]:
    """Every environment variable deploy/ sets (compose `environment`, Kubernetes `env`,
    ConfigMap literals), with the files that set it."""
    found: dict[str, set[str]] = {}

    def visit(node: object, where: str) -> None:
        if isinstance(node, dict):
            env = node.get("environment")
            if isinstance(env, dict):
                names = list(env)
            elif isinstance(env, list):
                names = [str(e).split("=", 1)[0] for e in env]
            else:
                names = []
            if isinstance(node.get("env"), list):
                names += [e["name"] for e in node["env"] if isinstance(e, dict) and "name" in e]
            for gen in node.get("configMapGenerator") or []:
                names += [lit.split("=", 1)[0] for lit in gen.get("literals", [])]
            for name in names:
                found.setdefault(name, set()).add(where)
            for child in node.values():
                visit(child, where)
        elif isinstance(node, list):
            for child in node:
                visit(child, where)

    for path in sorted([*DEPLOY.rglob("*.yaml"), *DEPLOY.rglob("*.yml")]):
        for doc in load_docs(path):
            visit(doc, str(path.relative_to(REPO)))
    return found


def test_every_project_variable_deploy_sets_is_a_setting() -> None:
    """A misspelt variable is ignored by the service it was meant for (a warning at
    start), so the manifests may set only variables a settings class reads."""
    from services.billing.settings import BillingSettings
    from services.clearing.settings import ClearingSettings
    from services.console.settings import ConsoleSettings
    from services.payout_simulator.settings import PayoutSimulatorSettings
    from services.settlement.settings import SettlementSettings
    from shared import settings

    known = set(settings._GLOBAL_VARIABLES)
    for cls in (BillingSettings, ClearingSettings, SettlementSettings, PayoutSimulatorSettings,
                ConsoleSettings):
        known |= settings._variable_names(cls)
    found = deploy_variables()
    assert "BILLING_PORT" in found, "no variable found under deploy/"
    unknown = {name: sorted(files) for name, files in found.items()
               if name.startswith(settings.PREFIXES) and name not in known}
    assert unknown == {}
