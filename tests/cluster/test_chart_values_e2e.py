"""Every values file the chart ships, end to end against the fake KFP API server (tests/cluster/fake_kfp.py).

For each one: render the chart as `helm install` would (helm-python-sdk), then do what Kubernetes does with each
workload, in the order of the release's life: the CronJob's pod (cronjob mode) or the post-install hook Job, a
second post-install (`helm upgrade`), then the pre-delete hook Job (`helm uninstall`). "Do what Kubernetes does"
means: the container's command and args with ``$(VAR)`` expanded from its env; the ConfigMap's ``config.yaml``
at its mount path; each ``secretKeyRef`` resolved from a Secret holding exactly the keys the docs tell users to
create (a key it lacks fails here as the pod would, in CreateContainerConfigError); the projected
ServiceAccount token at its mount path. The command then runs (in this process, through ``ensemw2s.cli.main``)
against a fake KFP server that is multi-user when the values say so (it requires that token and the
namespace). It must create the run, or the recurring run, and uninstalling must leave no recurring run.
"""
from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

helm = pytest.importorskip("helm_python", reason="helm-python-sdk is in the [dev] extra")

sys.path.insert(0, str(Path(__file__).parent))
import chartrun  # noqa: E402
from fake_kfp import FakeKFP  # noqa: E402

from ensemw2s import cli  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "ensemw2s"
RELEASE, NAMESPACE = "nightly", "ml-team"
TOKEN = chartrun.TOKEN
VALUES_FILES = {"default": None, **{p.stem: p for p in sorted((CHART / "ci").glob("*.yaml"))}}


def secret_keys() -> list[str]:
    """The keys docs/cluster.md tells users to put in the Secret (its `kubectl create secret` line)."""
    text = (REPO / "docs" / "cluster.md").read_text(encoding="utf-8").replace("\\\n", " ")
    commands = [line for line in text.splitlines() if re.match(r"\s*kubectl .*create secret generic", line)]
    assert commands, "docs/cluster.md has no `kubectl create secret generic` command"
    return re.findall(r"--from-literal=([A-Za-z0-9_.-]+)=", commands[0])


def render(values_file: Path | None) -> list[dict]:
    values = {} if values_file is None else helm.values_from_yaml(values_file.read_text(encoding="utf-8"))
    return chartrun.render(CHART, values, RELEASE, NAMESPACE)


def run_in_process(pod: chartrun.Pod, monkeypatch) -> int:
    for name in ("S3_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "KF_PIPELINES_SA_TOKEN_PATH",
                 "KF_PIPELINES_UI_ENDPOINT", "KFP_HOST"):
        monkeypatch.delenv(name, raising=False)
    for name, value in pod.env.items():
        monkeypatch.setenv(name, value)
    return cli.main(pod.argv())


@pytest.mark.parametrize("name", sorted(VALUES_FILES))
def test_values_file_end_to_end(name, tmp_path, monkeypatch, capsys):
    docs = render(VALUES_FILES[name])
    with helm.Chart.load(CHART) as chart:
        merged = chart.merge_values({} if VALUES_FILES[name] is None
                                    else helm.values_from_yaml(VALUES_FILES[name].read_text(encoding="utf-8")))
    keys = secret_keys()
    # the Secret as docs/cluster.md creates it (dummy values; nothing here reaches an object store)
    secrets = {merged["s3"]["existingSecret"]: {k: f"dummy-{k.lower()}" for k in keys}}
    secrets[merged["s3"]["existingSecret"]]["S3_ENDPOINT_URL"] = "http://127.0.0.1:9"
    multi_user = merged["kfp"]["multiUser"]
    fake = FakeKFP(multi_user=multi_user, token=TOKEN if multi_user else None, namespaces={NAMESPACE})
    with fake:
        workloads = chartrun.workloads(docs)
        pod = lambda c: chartrun.Pod(workloads[c], docs, secrets, tmp_path / c, fake.url)  # noqa: E731
        if merged["mode"] == "cronjob":
            assert set(workloads) == {"submit"}
            assert run_in_process(pod("submit"), monkeypatch) == 0, capsys.readouterr()
            runs = fake.calls("POST", r"/apis/v2beta1/runs")
            assert runs and fake.state.runs, "no KFP run was created"
            for call in runs:
                body = call.json
                exp = fake.state.experiments[body["experiment_id"]]
                assert exp["display_name"] == merged["kfp"]["experiment"]
                if multi_user:
                    assert exp["namespace"] == NAMESPACE
                _check_platform_spec(body["pipeline_spec"]["platform_spec"], merged)
        else:
            assert set(workloads) == {"schedule", "unschedule"}
            for _ in range(2):  # helm install, then helm upgrade: still one recurring run
                assert run_in_process(pod("schedule"), monkeypatch) == 0, capsys.readouterr()
                (rr,) = fake.state.recurring_runs.values()
                assert rr["trigger"]["cron_schedule"]["cron"] == merged["schedule"]["kfpCron"].strip()
                assert rr["display_name"] == merged["kfp"]["experiment"]
                _check_platform_spec(rr["pipeline_spec"]["platform_spec"], merged)
            assert run_in_process(pod("unschedule"), monkeypatch) == 0, capsys.readouterr()  # helm uninstall
            assert fake.state.recurring_runs == {}, "helm uninstall left the recurring run firing"
        if multi_user:
            assert all(r.headers.get("authorization") == f"Bearer {TOKEN}" for r in fake.requests
                       if not r.path.endswith("/healthz"))


def _check_platform_spec(platform_spec: dict, merged: dict) -> None:
    """Every pipeline pod reads the chart's Secret, and pulls with the chart's pull secrets."""
    executors = platform_spec["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    pull = sorted(s["name"] for s in merged.get("imagePullSecrets") or [])
    for name, executor in executors.items():
        assert {s["secretName"] for s in executor["secretAsEnv"]} == {merged["s3"]["existingSecret"]}, name
        if pull:
            got = sorted(s.get("secretName") or s["secretNameParameter"]["runtimeValue"]["constant"]
                         for s in executor["imagePullSecret"])
            assert got == pull, name


def test_the_docs_secret_is_what_the_chart_pods_need(tmp_path):
    """The Secret of the test above (from docs/cluster.md) is not built to pass: without S3_ENDPOINT_URL, the
    key the old chart docs left out, the pods could not start."""
    keys = [k for k in secret_keys() if k != "S3_ENDPOINT_URL"]
    docs = render(None)
    template = chartrun.workloads(docs)["submit"]
    with pytest.raises(AssertionError, match="has no key 'S3_ENDPOINT_URL'"):
        chartrun.Pod(template, docs, {"ensemw2s-s3": {k: "x" for k in keys}}, tmp_path, "http://x")
