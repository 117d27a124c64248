"""The Helm chart, checked offline: rendered with Helm's own Go SDK (helm-python-sdk, no helm binary, no
cluster), linted strictly, every manifest validated against the Kubernetes OpenAPI schemas in strict mode
(kubernetes-validate), then parsed and checked for the properties the nightly ablations rely on."""
from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

import pytest
import yaml

helm = pytest.importorskip("helm_python", reason="helm-python-sdk is in the [dev] extra")
kubernetes_validate = pytest.importorskip(
    "kubernetes_validate", reason="kubernetes-validate is in the [dev] extra"
)

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "ensemw2s"
RELEASE = "nightly"
NAMESPACE = "ml-team"

# Kubernetes versions the manifests must be valid for: the chart's minimum (Chart.yaml kubeVersion) and the
# newest one kubernetes-validate ships schemas for.
MIN_KUBE_VERSION = "1.30.0"
KUBE_VERSIONS = (MIN_KUBE_VERSION, kubernetes_validate.latest_version())

# Planted in the renderer's environment; a chart that copies credentials from anywhere but a Secret
# reference would leak them into the manifests. (AWS's documented example keys, never real.)
TEST_SECRETS = {
    "AWS_ACCESS_KEY_ID": "AKIAIOSFODNN7EXAMPLE",
    "AWS_SECRET_ACCESS_KEY": "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
    "AWS_SESSION_TOKEN": "test-only-session-token-3f9c1e",
}

SCENARIOS = {
    "default": None,
    "recurring": CHART / "ci" / "values-recurring.yaml",
    "gpu-suspended": CHART / "ci" / "values-gpu-suspended.yaml",
    "multiuser": CHART / "ci" / "values-multiuser.yaml",
}


def test_every_shipped_values_file_is_a_scenario():
    assert {p for p in SCENARIOS.values() if p} == set((CHART / "ci").glob("*.yaml"))


def _values(path: Path | None) -> dict:
    return {} if path is None else helm.values_from_yaml(path.read_text(encoding="utf-8"))


def _render(values: dict) -> dict[str, str]:
    with helm.Chart.load(CHART) as chart:
        return chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)


def _docs(rendered: dict[str, str]) -> list[dict]:
    docs = []
    for path, text in sorted(rendered.items()):
        if path.endswith("NOTES.txt"):
            continue
        docs.extend(d for d in yaml.safe_load_all(text) if d)
    return docs


class Rendered:
    def __init__(self, values: dict):
        with helm.Chart.load(CHART) as chart:
            self.merged = chart.merge_values(values)
        self.values = values
        self.files = _render(values)
        self.text = "\n".join(self.files.values())
        self.docs = _docs(self.files)

    def of_kind(self, kind: str) -> list[dict]:
        return [d for d in self.docs if d["kind"] == kind]

    def one(self, kind: str, component: str | None = None) -> dict:
        found = [d for d in self.of_kind(kind) if component is None
                 or d["metadata"]["labels"].get("app.kubernetes.io/component") == component]
        assert len(found) == 1, f"expected one {kind}, got {[d['metadata']['name'] for d in found]}"
        return found[0]

    def pod_templates(self) -> list[dict]:
        out = []
        for d in self.docs:
            if d["kind"] == "CronJob":
                out.append(d["spec"]["jobTemplate"]["spec"]["template"])
            elif d["kind"] in ("Job", "Deployment", "StatefulSet", "DaemonSet"):
                out.append(d["spec"]["template"])
        assert out, "no workload rendered"
        return out


@pytest.fixture(scope="module")
def renders() -> dict[str, Rendered]:
    saved = {k: os.environ.get(k) for k in TEST_SECRETS}
    os.environ.update(TEST_SECRETS)
    try:
        return {name: Rendered(_values(path)) for name, path in SCENARIOS.items()}
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _env(container: dict) -> dict[str, dict]:
    return {e["name"]: e for e in container.get("env", [])}


def _containers(pod_template: dict) -> list[dict]:
    spec = pod_template["spec"]
    return spec.get("initContainers", []) + spec["containers"]


# ------------------------------------------------------------------------------------------ lint/schema


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_lint_strict_has_no_warnings(scenario):
    report = helm.lint(CHART, _values(SCENARIOS[scenario]), strict=True, namespace=NAMESPACE,
                       kube_version=f"v{MIN_KUBE_VERSION}")
    assert report["total_charts_linted"] == 1
    assert report["errors"] == []
    # severity: 1 info (e.g. "icon is recommended"), 2 warning, 3 error
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


@pytest.mark.parametrize("version", KUBE_VERSIONS)
@pytest.mark.parametrize("scenario", SCENARIOS)
def test_every_manifest_validates_against_kubernetes_schema(renders, scenario, version):
    docs = renders[scenario].docs
    assert docs
    for doc in docs:
        # raises ValidationError (unknown field, wrong type, ...) or SchemaNotFoundError (unknown kind or
        # apiVersion): both fail the test, there is no warning-only outcome
        kubernetes_validate.validate(doc, version, strict=True)


def test_values_schema_rejects_typos_and_inline_credentials():
    with helm.Chart.load(CHART) as chart:
        chart.validate_schema({})
        for bad in ({"mode": "cron"}, {"schedule": {"suspend": "yes"}}, {"shedule": {}},
                    {"s3": {"accessKeyId": TEST_SECRETS["AWS_ACCESS_KEY_ID"]}},
                    # the key names are fixed (pipelines/k8s.py S3_SECRET_KEYS); no bucket: it is storage.bucket
                    {"s3": {"accessKeyIdKey": "access-key"}}, {"s3": {"bucket": "b"}},
                    {"kfp": {"namespace": "Not_A_Namespace"}}, {"kfp": {"pipeline": "nightly"}}):
            with pytest.raises(helm.HelmValuesError):
                chart.validate_schema(bad)


# ------------------------------------------------------------------------------------------ CronJob mode


@pytest.mark.parametrize(
    ("scenario", "suspend", "ok_limit", "failed_limit", "deadline", "cron"),
    [("default", False, 3, 5, 3600, "0 2 * * *"), ("gpu-suspended", True, 1, 2, 600, "15 3 * * 0")],
)
def test_cronjob_policy_follows_values(renders, scenario, suspend, ok_limit, failed_limit, deadline, cron):
    r = renders[scenario]
    spec = r.one("CronJob")["spec"]
    assert spec["concurrencyPolicy"] == "Forbid"
    assert spec["suspend"] is suspend
    assert spec["successfulJobsHistoryLimit"] == ok_limit
    assert spec["failedJobsHistoryLimit"] == failed_limit
    assert spec["startingDeadlineSeconds"] == deadline
    assert spec["schedule"] == cron and len(cron.split()) == 5
    assert r.of_kind("Job") == []
    job = spec["jobTemplate"]["spec"]
    assert job["template"]["spec"]["restartPolicy"] == "Never"
    assert job["activeDeadlineSeconds"] > 0 and job["backoffLimit"] >= 0


def test_cronjob_runs_ensemw2s_submit(renders):
    r = renders["default"]
    pod = r.one("CronJob")["spec"]["jobTemplate"]["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    argv = container["command"] + container["args"]
    config_path = "/etc/ensemw2s/config.yaml"
    assert argv == ["ensemw2s", "submit", "--host", "$(KFP_HOST)", "--pipeline", "ablations",
                    "--experiment", r.merged["kfp"]["experiment"], "--config", config_path,
                    "--set", "resources.s3_secret_name=ensemw2s-s3"]
    assert _env(container)["KFP_HOST"]["value"] == r.merged["kfp"]["host"]
    cm_name = r.one("ConfigMap")["metadata"]["name"]
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    mount = next(m for m in container["volumeMounts"] if volumes[m["name"]].get("configMap"))
    assert volumes[mount["name"]]["configMap"]["name"] == cm_name
    assert mount["readOnly"] is True and f"{mount['mountPath']}/config.yaml" == config_path


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_config_checksum_is_sha256_of_rendered_configmap_data(renders, scenario):
    r = renders[scenario]
    config_yaml = r.one("ConfigMap")["data"]["config.yaml"]
    assert config_yaml == r.merged["ablations"]  # verbatim
    expected = hashlib.sha256(config_yaml.encode("utf-8")).hexdigest()
    for pod in r.pod_templates():
        assert pod["metadata"]["annotations"]["checksum/config"] == expected


def test_config_change_changes_checksum(renders):
    before = renders["default"].pod_templates()[0]["metadata"]["annotations"]["checksum/config"]
    changed = Rendered({"ablations": "boosting: {rounds: 7}\n"})
    after = changed.pod_templates()[0]["metadata"]["annotations"]["checksum/config"]
    assert "rounds: 7" in changed.one("ConfigMap")["data"]["config.yaml"]
    assert after != before


# ------------------------------------------------------------------------------------------ secrets


CREDENTIAL_NAME = re.compile(r"(SECRET|PASSWORD|TOKEN|ACCESS_KEY|CREDENTIAL)", re.IGNORECASE)


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_s3_secret_is_referenced_by_name_only(renders, scenario):
    r = renders[scenario]
    s3 = r.merged["s3"]
    assert r.of_kind("Secret") == []
    assert "kind: Secret" not in r.text
    for pod in r.pod_templates():
        for container in _containers(pod):
            env = _env(container)
            for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "S3_ENDPOINT_URL"):
                assert "value" not in env[var]
                assert env[var]["valueFrom"]["secretKeyRef"] == {"name": s3["existingSecret"], "key": var}
            assert "S3_BUCKET" not in env  # the bucket is the config's storage.bucket
            for name, var in env.items():
                if CREDENTIAL_NAME.search(name) and name != "KF_PIPELINES_SA_TOKEN_PATH":
                    assert "value" not in var, f"{name} carries a literal value"


def test_the_pipeline_pods_get_the_charts_secret_and_pull_secrets(renders):
    """One Secret for the submitting pod and every pipeline pod: the chart passes its name (and the image pull
    secrets) to the pipeline as --set overrides."""
    recurring = renders["recurring"]
    (job,) = [d for d in recurring.of_kind("Job") if "post-install" in d["metadata"]["annotations"]["helm.sh/hook"]]
    args = job["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--set") + 1] == "resources.s3_secret_name=team-ml-s3-credentials"
    cron = renders["gpu-suspended"].one("CronJob")["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    args = cron["containers"][0]["args"]
    sets = [args[i + 1] for i, a in enumerate(args) if a == "--set"]
    assert sets == ["resources.s3_secret_name=ensemw2s-s3", "resources.image_pull_secrets=[regcred]"]


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_test_only_secrets_never_rendered(renders, scenario):
    text = renders[scenario].text
    for secret in TEST_SECRETS.values():
        assert secret not in text
    assert not re.search(r"AKIA[0-9A-Z]{16}", text)


# ------------------------------------------------------------------------------------------ pod hardening


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_pods_are_hardened_and_bounded(renders, scenario):
    r = renders[scenario]
    for pod in r.pod_templates():
        spec = pod["spec"]
        psc = spec["securityContext"]
        assert psc["runAsNonRoot"] is True and psc["runAsUser"] == 10001
        assert psc["seccompProfile"]["type"] == "RuntimeDefault"
        assert spec["automountServiceAccountToken"] is False
        emptydirs = {v["name"] for v in spec["volumes"] if "emptyDir" in v}
        for container in _containers(pod):
            sc = container["securityContext"]
            assert sc["runAsNonRoot"] is True and sc["runAsUser"] == 10001
            assert sc["readOnlyRootFilesystem"] is True
            assert sc["allowPrivilegeEscalation"] is False
            assert sc.get("privileged", False) is False
            assert sc["capabilities"]["drop"] == ["ALL"] and not sc["capabilities"].get("add")
            assert sc["seccompProfile"]["type"] == "RuntimeDefault"
            limits, requests = container["resources"]["limits"], container["resources"]["requests"]
            assert limits["cpu"] and limits["memory"] and requests["cpu"] and requests["memory"]
            writable = {m["mountPath"] for m in container["volumeMounts"] if m["name"] in emptydirs}
            assert {"/tmp", r.merged["scratch"]["cacheDir"], "/home/app/.config"} <= writable
            assert _env(container)["ENSEMW2S_HOME"]["value"] == r.merged["scratch"]["cacheDir"]


def test_default_creates_service_account_without_rbac(renders):
    r = renders["default"]
    sa = r.one("ServiceAccount")
    assert sa["automountServiceAccountToken"] is False
    assert r.pod_templates()[0]["spec"]["serviceAccountName"] == sa["metadata"]["name"]
    assert r.of_kind("Role") == [] and r.of_kind("RoleBinding") == []


def test_gpu_suspended_scheduling_and_existing_service_account(renders):
    r = renders["gpu-suspended"]
    v = r.values
    assert r.of_kind("ServiceAccount") == []
    (pod,) = r.pod_templates()
    spec = pod["spec"]
    assert spec["serviceAccountName"] == "kfp-submitter"
    assert spec["nodeSelector"] == v["nodeSelector"]
    assert spec["tolerations"] == v["tolerations"]
    assert spec["affinity"] == v["affinity"]
    assert spec["imagePullSecrets"] == [{"name": "regcred"}]
    (container,) = spec["containers"]
    assert container["resources"] == v["resources"]
    assert container["image"] == "registry.example.org/ml/ensemw2s:0.1.0-cuda"
    assert container["imagePullPolicy"] == "Always"
    assert r.one("CronJob")["spec"]["timeZone"] == "Europe/Berlin"
    assert pod["metadata"]["annotations"]["cluster-autoscaler.kubernetes.io/safe-to-evict"] == "false"
    assert "KF_PIPELINES_SA_TOKEN_PATH" not in _env(container)
    assert not any("projected" in vol for vol in spec["volumes"])


# ------------------------------------------------------------------------------------------ recurringRun mode


def test_recurring_mode_renders_schedule_and_unschedule_hook_jobs_and_no_cronjob(renders):
    r = renders["recurring"]
    assert r.of_kind("CronJob") == []
    job = r.one("Job", "schedule")
    hooks = set(job["metadata"]["annotations"]["helm.sh/hook"].split(","))
    assert hooks == {"post-install", "post-upgrade"}
    (container,) = job["spec"]["template"]["spec"]["containers"]
    argv = container["command"] + container["args"]
    assert argv[:2] == ["ensemw2s", "schedule"]
    opts = dict(zip(argv[2::2], argv[3::2]))
    assert opts == {"--host": "$(KFP_HOST)", "--cron": "0 30 1 * * 1-5", "--pipeline": "ablations",
                    "--config": "/etc/ensemw2s/config.yaml", "--experiment": "ensemw2s-weekday-ablations",
                    "--namespace": NAMESPACE, "--set": "resources.s3_secret_name=team-ml-s3-credentials"}
    assert len(opts["--cron"].split()) == 6
    assert _env(container)["KFP_HOST"]["value"] == "https://kubeflow.example.org/pipeline"
    assert _env(container)["KF_PIPELINES_UI_ENDPOINT"]["value"] == "https://kubeflow.example.org/pipeline"
    assert container["image"] == "ghcr.io/ensemw2s/ensemw2s@" + r.values["image"]["digest"]
    # multi-user KFP: the projected token for the pipelines.kubeflow.org audience, and RBAC for it
    token = next(v for v in job["spec"]["template"]["spec"]["volumes"] if v["name"] == "kfp-token")
    assert token["projected"]["sources"][0]["serviceAccountToken"]["audience"] == "pipelines.kubeflow.org"
    role, binding = r.one("Role"), r.one("RoleBinding")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert "delete" in role["rules"][0]["verbs"]  # the pre-delete hook deletes the recurring run
    sa_name = r.one("ServiceAccount")["metadata"]["name"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": sa_name, "namespace": NAMESPACE}]
    # helm uninstall: a pre-delete hook deletes the recurring run (it lives in KFP, not in Kubernetes)
    undo = r.one("Job", "unschedule")
    assert undo["metadata"]["annotations"]["helm.sh/hook"] == "pre-delete"
    assert set(undo["metadata"]["annotations"]["helm.sh/hook-delete-policy"].split(",")) == {
        "before-hook-creation", "hook-succeeded"}
    (container,) = undo["spec"]["template"]["spec"]["containers"]
    assert container["args"] == ["schedule", "--delete", "--host", "$(KFP_HOST)", "--pipeline", "ablations",
                                 "--experiment", "ensemw2s-weekday-ablations", "--namespace", NAMESPACE]


def test_cronjob_mode_has_no_hooks(renders):
    for scenario in ("default", "gpu-suspended", "multiuser"):
        assert renders[scenario].of_kind("Job") == []


def test_multi_user_values_pass_the_namespace_and_the_token(renders):
    r = renders["multiuser"]
    pod = r.one("CronJob")["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    args = container["args"]
    assert args[args.index("--namespace") + 1] == NAMESPACE  # kfp.namespace empty: the release namespace
    assert _env(container)["KF_PIPELINES_SA_TOKEN_PATH"]["value"] == "/var/run/secrets/kubeflow/pipelines/token"
    # automountServiceAccountToken stays false: kfp.Client cannot read the namespace file, hence --namespace
    assert pod["automountServiceAccountToken"] is False
    assert r.one("Role") and r.one("RoleBinding")
    assert "--namespace" not in renders["default"].one("CronJob")["spec"]["jobTemplate"]["spec"]["template"][
        "spec"]["containers"][0]["args"]


@pytest.mark.parametrize(
    ("yaml_text", "key", "needs"),
    [
        ('mode: recurringRun\nschedule:\n  kfpCron: "0 2 * * *"\n', "schedule.kfpCron", "6-field"),
        ('mode: recurringRun\nschedule:\n  kfpCron: ""\n', "schedule.kfpCron", "6-field"),
        ('schedule:\n  cron: "0 0 2 * * *"\n', "schedule.cron", "5-field"),
        # what Helm's deep merge produced from the old map form: ablation keys next to config sections
        ('ablations: |\n  base: {seed: 0}\n  grid: {boosting.rounds: [1, 2]}\n  seed: 1\n  boosting: {rounds: 5}\n',
         "ablations", "config sections belong under 'base:'"),
        ('ablations: "a: [1"\n', "ablations", "not a YAML mapping"),
        ('ablations: " "\n', "ablations", "empty"),
        ('kfp:\n  multiUser: true\n', "rbac.create", "must be true with kfp.multiUser"),
        ('kfp:\n  multiUser: true\n  serviceAccountToken: {enabled: false}\nrbac: {create: true}\n',
         "kfp.serviceAccountToken.enabled", "must be true with kfp.multiUser"),
    ],
)
def test_bad_values_fail_with_a_clear_message(tmp_path, yaml_text, key, needs):
    values_file = tmp_path / "values-bad.yaml"
    values_file.write_text(yaml_text, encoding="utf-8")
    with pytest.raises(helm.HelmRenderError) as err:
        _render(_values(values_file))
    message = str(err.value)
    assert key in message and needs in message
    # (helm lint cannot catch this: in lint mode Helm turns `fail` into a log line, so rendering is the check)


def test_the_old_map_form_of_ablations_is_refused_by_the_schema():
    """`ablations:` as a map was deep-merged by Helm into the defaults (issue 13): it must be a string now."""
    with helm.Chart.load(CHART) as chart:
        with pytest.raises(helm.HelmValuesError, match="ablations"):
            chart.validate_schema({"ablations": {"seed": 1, "boosting": {"rounds": 5}}})
