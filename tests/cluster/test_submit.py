"""`ensemw2s submit` / `schedule` against a fake KFP API server (tests/cluster/fake_kfp.py) driven by the real
kfp.Client: what is sent (pipeline spec, run_id parameter, 6-field cron), what is never sent (secrets, a bad
cron), that scheduling twice under one name leaves one recurring run and `schedule --delete` removes it, the
backend version floor, multi-user Kubeflow (namespace and bearer token) and the UI links. Also the ablation
pipeline's shape (compiled and parsed) and the compare step's table from fake metrics."""
from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from fake_kfp import FakeKFP  # noqa: E402

from ensemw2s import cli  # noqa: E402

SENTINELS = {"AWS_ACCESS_KEY_ID": "AKIASUBMITSENTINEL01",
             "AWS_SECRET_ACCESS_KEY": "submit-sentinel-secret-7c4e"}


@pytest.fixture
def kfp_server():
    with FakeKFP() as server:
        yield server


@pytest.fixture
def no_s3(monkeypatch):
    """Credentials in the environment (as on a developer machine) but no S3 endpoint."""
    for k, v in SENTINELS.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("S3_ENDPOINT_URL", raising=False)
    monkeypatch.delenv("KF_PIPELINES_SA_TOKEN_PATH", raising=False)
    monkeypatch.delenv("KF_PIPELINES_UI_ENDPOINT", raising=False)


def _tasks(spec: dict) -> list[str]:
    """Display names of every task in the root DAG and in every sub-DAG."""
    dags = [spec["root"]["dag"]] + [c["dag"] for c in spec["components"].values() if "dag" in c]
    return [t["taskInfo"]["name"] for d in dags for t in d["tasks"].values()]


def _no_secrets(server: FakeKFP, values) -> None:
    assert server.requests
    for r in server.requests:
        for v in values:
            assert v not in r.body and v not in json.dumps(r.query), f"secret sent in {r.method} {r.path}"


def test_submit_sends_the_pipeline_with_run_id_and_no_secrets(repo_root, kfp_server, no_s3, capsys):
    rc = cli.main(["submit", "--host", kfp_server.url, "--config", str(repo_root / "configs/tiny.yaml"),
                   "--set", "boosting.rounds=3", "--run-id", "sub-test-1", "--experiment", "exp-a",
                   "--run-name", "nightly check"])
    out = capsys.readouterr().out
    assert rc == 0, out
    (create,) = kfp_server.calls("POST", r"/apis/v2beta1/runs")
    body = create.json
    assert body["display_name"] == "nightly check"
    assert body["runtime_config"]["parameters"] == {"run_id": "sub-test-1"}
    exp = kfp_server.state.experiments[body["experiment_id"]]
    assert exp["display_name"] == "exp-a"
    spec = body["pipeline_spec"]["pipeline_spec"]
    tasks = _tasks(spec)
    experts = sorted(t for t in tasks if t.startswith("train_expert"))
    assert experts == [f"train_expert-r{t}" for t in (1, 2, 3)]
    assert "run_id" in spec["root"]["inputDefinitions"]["parameters"]
    platform = body["pipeline_spec"]["platform_spec"]["platforms"]["kubernetes"]
    platform = platform["deploymentSpec"]["executors"]
    assert all(e["secretAsEnv"][0]["secretName"] == "ensemw2s-s3" for e in platform.values())
    _no_secrets(kfp_server, SENTINELS.values())
    kfp_id = next(iter(kfp_server.state.runs))
    assert f"submitted run sub-test-1 (KFP run {kfp_id})" in out
    # the API server (ml-pipeline:8888) serves no UI: no link is built from it, by us or by kfp.Client
    assert "/#/runs/details/" not in out and "/#/experiments/details/" not in out
    assert f"KFP UI: no link (the API host serves no UI); KFP run {kfp_id}" in out


def test_submit_generates_a_run_id(repo_root, kfp_server, no_s3, capsys):
    tiny = str(repo_root / "configs/tiny.yaml")
    assert cli.main(["submit", "--host", kfp_server.url, "--config", tiny]) == 0
    (create,) = kfp_server.calls("POST", r"/apis/v2beta1/runs")
    rid = create.json["runtime_config"]["parameters"]["run_id"]
    assert rid and rid in capsys.readouterr().out
    from ensemw2s.storage import validate_name

    validate_name("run id", rid)


def test_submit_ablations(repo_root, kfp_server, no_s3, capsys):
    rc = cli.main(["submit", "--host", kfp_server.url, "--pipeline", "ablations",
                   "--config", str(repo_root / "configs/ablations.yaml"), "--run-id", "abl-test",
                   "--set", "grid.boosting.alpha_rule=[prior]", "--set", "grid.boosting.sampling=[resample]",
                   "--set", "seeds=[0,1]"])
    out = capsys.readouterr().out
    assert rc == 0, out
    (create,) = kfp_server.calls("POST", r"/apis/v2beta1/runs")
    assert create.json["runtime_config"]["parameters"] == {"run_id": "abl-test"}
    assert "4 grid points x 2 seeds = 8 runs" in out
    assert create.json["display_name"] == "ensemw2s ablations abl-test"
    _no_secrets(kfp_server, SENTINELS.values())


def test_schedule_sends_a_six_field_cron_and_the_pipeline(repo_root, kfp_server, no_s3, capsys):
    rc = cli.main(["schedule", "--host", kfp_server.url, "--cron", "0 0 3 * * *", "--pipeline", "ablations",
                   "--config", str(repo_root / "configs/ablations.yaml"), "--experiment", "nightly",
                   "--set", "grid.boosting.rounds=[2]", "--set", "grid.boosting.sampling=[resample]"])
    out = capsys.readouterr().out
    assert rc == 0, out
    (create,) = kfp_server.calls("POST", r"/apis/v2beta1/recurringruns")
    body = create.json
    assert body["trigger"]["cron_schedule"]["cron"] == "0 0 3 * * *"
    assert body["display_name"] == "nightly" and body["mode"] == "ENABLE"
    assert int(body["max_concurrency"]) == 1 and body["no_catchup"] is True
    # every firing must get its own run id: the pipeline makes one from the KFP job id when run_id is empty
    assert body["runtime_config"]["parameters"] == {"run_id": ""}
    spec = body["pipeline_spec"]["pipeline_spec"]
    assert spec["pipelineInfo"]["name"] == "ensemw2s-ablations"
    # one sub-pipeline per distinct rounds value (the 6 points are loop items over it): 2 rounds unrolled once
    assert len([t for t in _tasks(spec) if t.startswith("train_expert")]) == 2
    _no_secrets(kfp_server, SENTINELS.values())
    assert "'0 0 3 * * *'" in out


def test_schedule_main_makes_a_new_run_id_per_firing(repo_root, kfp_server, no_s3):
    assert cli.main(["schedule", "--host", kfp_server.url, "--cron", "0 30 1 * * 1-5",
                     "--config", str(repo_root / "configs/tiny.yaml")]) == 0
    (create,) = kfp_server.calls("POST", r"/apis/v2beta1/recurringruns")
    spec = create.json["pipeline_spec"]["pipeline_spec"]
    tasks = _tasks(spec)
    assert "prepare-run" in tasks and tasks.count("train_expert-r1") == 1
    assert "{{$.pipeline_job_uuid}}" in json.dumps(spec)


@pytest.mark.parametrize("cron,hint", [("0 3 * * *", '"0 0 3 * * *"'), ("*/5 * * * *", '"0 */5 * * * *"')])
def test_five_field_cron_is_rejected_before_any_request(repo_root, kfp_server, no_s3, capsys, cron, hint):
    rc = cli.main(["schedule", "--host", kfp_server.url, "--cron", cron,
                   "--config", str(repo_root / "configs/tiny.yaml")])
    err = capsys.readouterr().err
    assert rc == 2
    assert "KFP needs 6 fields" in err and hint in err
    assert kfp_server.requests == []


def test_other_bad_crons_are_rejected(repo_root, kfp_server, no_s3, capsys):
    for cron in ("0 0 3 * * * *", "", "0 0 3 * * ;rm"):
        assert cli.main(["schedule", "--host", kfp_server.url, "--cron", cron,
                         "--config", str(repo_root / "configs/tiny.yaml")]) == 2
    assert kfp_server.requests == []


def test_schedule_twice_with_one_name_leaves_one_recurring_run(repo_root, no_s3, capsys):
    with FakeKFP(page_limit=1) as server:  # one per page: the replace must follow next_page_token
        args = ["schedule", "--host", server.url, "--config", str(repo_root / "configs/tiny.yaml"),
                "--experiment", "nightly", "--name", "ensemw2s-nightly"]
        assert cli.main([*args, "--cron", "0 0 2 * * *"]) == 0
        assert cli.main([*args, "--cron", "0 0 2 * * *", "--name", "other-schedule"]) == 0
        first = {r["display_name"]: i for i, r in server.state.recurring_runs.items()}
        assert cli.main([*args, "--cron", "0 15 4 * * *"]) == 0
        out = capsys.readouterr().out
        left = list(server.state.recurring_runs.values())
        assert sorted(r["display_name"] for r in left) == ["ensemw2s-nightly", "other-schedule"]
        mine = next(r for r in left if r["display_name"] == "ensemw2s-nightly")
        assert mine["trigger"]["cron_schedule"]["cron"] == "0 15 4 * * *"
        assert [r.path for r in server.calls("DELETE", r".*")] == [
            f"/apis/v2beta1/recurringruns/{first['ensemw2s-nightly']}"]
        assert "replaced 1 earlier one(s)" in out
        # duplicates of the name that slipped in (e.g. two upgrades at once) are all replaced, across pages
        for i in range(2):
            server.state.recurring_runs[f"dup-{i}"] = {**mine, "recurring_run_id": f"dup-{i}"}
        assert cli.main([*args, "--cron", "0 0 5 * * *"]) == 0
        names = [r["display_name"] for r in server.state.recurring_runs.values()]
        assert sorted(names) == ["ensemw2s-nightly", "other-schedule"]
        assert "replaced 3 earlier one(s)" in capsys.readouterr().out


def test_bad_config_exits_2_before_any_request(tmp_path, kfp_server, no_s3, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("boosting: {rounds: 0}\n")
    assert cli.main(["submit", "--host", kfp_server.url, "--config", str(bad)]) == 2
    assert "boosting.rounds" in capsys.readouterr().err
    ab = tmp_path / "ab.yaml"
    ab.write_text("base: {}\ngrid: {boosting.roundz: [1, 2]}\n")
    assert cli.main(["submit", "--host", kfp_server.url, "--pipeline", "ablations", "--config", str(ab)]) == 2
    assert "unknown config key 'boosting.roundz'" in capsys.readouterr().err
    assert kfp_server.requests == []


# --------------------------------------------------------------------------- ablation pipeline


def _ablation(repo_root, *overrides):
    from ensemw2s.ablation import load_ablation

    return load_ablation(repo_root / "configs/ablations.yaml", list(overrides))


def test_ablation_config_errors(repo_root, tmp_path):
    from ensemw2s.ablation import ablation_from_dict
    from ensemw2s.config import ConfigError

    cases = [({"base": {}, "grids": {}}, "unknown key(s) 'grids'"),
             ({"grid": {"boosting": [1]}}, "is a section"),
             ({"grid": {"storage.bucket": ["a", "b"]}}, "cannot be varied"),
             ({"grid": {"seed": [1, 2]}}, "cannot be varied"),
             ({"grid": {"boosting.rounds": []}}, "non-empty list"),
             ({"grid": {"boosting.rounds": [1, 1]}}, "duplicate values"),
             ({"grid": {"boosting.alpha_rule": ["prior", "nope"]}}, "grid point g01-nope"),
             ({"grid": {"data.easy,data.hard": [["arc_easy"]]}}, "list of 2 values"),
             ({"seeds": [0, -1]}, "seeds"),
             ({"parallelism": -1}, "parallelism")]
    for data, msg in cases:
        with pytest.raises(ConfigError, match=msg.replace("(", r"\(").replace(")", r"\)")):
            ablation_from_dict(data)
    with pytest.raises(ConfigError, match="varied by the grid"):
        ablation_from_dict({"grid": {"boosting.rounds": [1, 2]}}, ["boosting.rounds=3"])
    # a plain project config (as the Helm chart's values render it) is one grid point over its own seed
    ab = ablation_from_dict({"seed": 4, "boosting": {"rounds": 2}})
    assert [p.name for p in ab.points] == ["g00-base"] and ab.seeds == [4]


def test_base_run_id_is_the_same_in_every_task():
    from ensemw2s.ablation import resolve_base_run_id

    assert resolve_base_run_id("given-1", "job") == "given-1"
    job = "1234abcd-56ef-7890-abcd-ef0123456789"
    assert resolve_base_run_id("", job) == "ablation-1234abcd56ef" == resolve_base_run_id("", job)
    assert resolve_base_run_id("", job, prefix="ensemw2s") == "ensemw2s-1234abcd56ef"


def test_compare_table_from_fake_metrics(tmp_path):
    from ensemw2s.ablation import ablation_from_dict, child_runs
    from ensemw2s.steps.compare import METRICS, write_outputs

    ab = ablation_from_dict({"grid": {"boosting.alpha_rule": ["prior", "samme"]}, "seeds": [0, 1, 2]})
    runs = child_runs(ab.plan(), "abl-base")
    assert [r["run_id"] for r in runs][:2] == ["abl-base-g00-prior-s0", "abl-base-g00-prior-s1"]
    metrics = {}

    def gap(low):  # the paired ceiling - weak differences that decide whether a PGR is shown
        return {f"paired_ceiling_minus_{w}_ood_{k}": v for w in ("single", "ensemble")
                for k, v in (("diff", low + 0.05), ("ci_low", low), ("ci_high", low + 0.1), ("n", 100))}

    for r in runs:
        base = 0.5 if r["point"].endswith("prior") else 0.6
        metrics[r["run_id"]] = {m: base + 0.1 * r["seed"] for m in METRICS} | gap(0.02)
    metrics["abl-base-g01-samme-s2"] = None  # a missing report is reported, not fatal
    # seed 2 of prior: the ceiling - weak interval includes 0, so its PGR (0.7) is noise and not averaged
    metrics["abl-base-g00-prior-s2"] |= gap(-0.03)
    summary = write_outputs(tmp_path, runs, metrics, ["boosting.alpha_rule"], "abl-base")
    rows = {r["point"]: r for r in summary["table"]}
    assert rows["g00-prior"]["ensemble_acc_ood_mean"] == pytest.approx(0.6)
    assert rows["g00-prior"]["ensemble_acc_ood_std"] == pytest.approx(0.1)
    assert rows["g00-prior"]["pgr_ens_mean"] == pytest.approx(0.55)
    assert (rows["g00-prior"]["pgr_ens_n"], rows["g00-prior"]["pgr_ens_no_gap"]) == (2, 1)
    assert rows["g01-samme"]["seeds"] == 2 and rows["g01-samme"]["pgr_ens_mean"] == pytest.approx(0.65)
    md = (tmp_path / "compare.md").read_text()
    assert "| g00-prior | prior | 3/3 | 0.600 ± 0.100" in md and "abl-base-g01-samme-s2" in md
    assert "0.550 ± 0.071 (2 of 3; 1 no gap)" in md
    with open(tmp_path / "compare.csv") as fh:
        table = list(csv.DictReader(fh))
    assert [r["point"] for r in table] == ["g00-prior", "g01-samme"]
    assert float(table[1]["ensemble_acc_ood_mean"]) == pytest.approx(0.65)
    with open(tmp_path / "runs.csv") as fh:
        per_run = list(csv.DictReader(fh))
    assert len(per_run) == 6
    assert [r["pgr_ens"] for r in per_run if r["run_id"] == "abl-base-g00-prior-s2"] == ["no gap"]
    assert (tmp_path / "compare.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.s3
def test_compare_step_reads_reports_from_storage(store, tmp_path):
    from ensemw2s import ablation
    from ensemw2s.steps import compare

    ab = ablation.ablation_from_dict({"grid": {"boosting.rounds": [1, 2]}, "seeds": [0, 1],
                                      "base": {"storage": {"bucket": store.bucket}}})
    runs = ablation.write_plan(ab.plan(), "abl-s3", None, ab.base.storage)
    assert store.get_json(runs[1]["run_id"], "run-summary", "config.json")["seed"] == 1
    for i, r in enumerate(runs[:3]):  # the last run never reported
        d = tmp_path / r["run_id"]
        d.mkdir()
        (d / "metrics.json").write_text(json.dumps({"ensemble_acc_ood": 0.1 * i, "pgr_ens": 0.5}))
        store.put_dir(d, r["run_id"], "report", "report", producer="report", config_hash="x")
    summary = compare.run(ab.plan(), base_run_id="abl-s3", out_dir=tmp_path / "out", storage=ab.base.storage)
    rows = {r["point"]: r for r in summary["table"]}
    assert rows["g00-1"]["ensemble_acc_ood_mean"] == pytest.approx(0.05)
    assert rows["g01-2"]["seeds"] == 1 and rows["g01-2"]["missing"] == ["abl-s3-g01-2-s1"]
    assert store.is_complete("abl-s3", "compare", "compare")
    assert "compare.md" in {f["path"] for f in store.get_manifest("abl-s3", "compare", "compare")["files"]}


# --------------------------------------------------------------------------- UI links


def test_ui_link_comes_from_the_ui_not_the_api_host(repo_root, kfp_server, no_s3, capsys, monkeypatch):
    tiny = str(repo_root / "configs/tiny.yaml")
    assert cli.main(["submit", "--host", kfp_server.url, "--config", tiny, "--run-id", "ui-1",
                     "--ui-url", "http://localhost:8080/"]) == 0
    out = capsys.readouterr().out
    kfp_id = next(iter(kfp_server.state.runs))
    assert f"KFP UI: http://localhost:8080/#/runs/details/{kfp_id}" in out
    assert f"{kfp_server.url}/#/" not in out
    monkeypatch.setenv("KF_PIPELINES_UI_ENDPOINT", "https://kfp-ui.example.org")  # kfp.Client's own setting
    assert cli.main(["schedule", "--host", kfp_server.url, "--config", tiny, "--cron", "0 0 2 * * *"]) == 0
    rr_id = next(iter(kfp_server.state.recurring_runs))
    assert f"KFP UI: https://kfp-ui.example.org/#/recurringrun/details/{rr_id}" in capsys.readouterr().out


def test_ui_base():
    from ensemw2s.cluster import ui_base

    assert ui_base("http://ml-pipeline.kubeflow.svc.cluster.local:8888") is None
    assert ui_base("http://localhost:8888", "http://localhost:8080/") == "http://localhost:8080"
    # Kubeflow's /pipeline endpoint is the UI's proxy: it serves the API and the UI
    assert ui_base("https://kubeflow.example.org/pipeline/") == "https://kubeflow.example.org/pipeline"


# --------------------------------------------------------------------------- backend version floor


@pytest.mark.parametrize("command", ["submit", "schedule"])
def test_an_older_kfp_backend_is_refused_before_anything_is_created(repo_root, no_s3, capsys, command):
    with FakeKFP(version="2.5.0") as server:
        args = [command, "--host", server.url, "--config", str(repo_root / "configs/tiny.yaml")]
        if command == "schedule":
            args += ["--cron", "0 0 2 * * *"]
        assert cli.main(args) == 1
        err = capsys.readouterr().err
        assert "KFP backend at" in err and "version 2.5.0, older than 2.15.0" in err
        assert "'optional'" in err and "'secretNameParameter'" in err
        assert [r for r in server.requests if r.method != "GET"] == []
        assert not server.state.experiments and not server.state.runs and not server.state.recurring_runs


def test_the_floor_version_is_accepted_and_an_unknown_one_is_said(repo_root, no_s3, capsys):
    from ensemw2s.cluster import MIN_KFP_VERSION

    tiny = str(repo_root / "configs/tiny.yaml")
    floor = ".".join(map(str, MIN_KFP_VERSION))
    for version in (floor, f"v{floor}", "2.16.1-rc.1"):
        with FakeKFP(version=version) as server:
            assert cli.main(["submit", "--host", server.url, "--config", tiny]) == 0
            assert len(server.state.runs) == 1
    with FakeKFP(version=None) as server:  # a backend built without TAG_NAME answers "unknown"
        assert cli.main(["submit", "--host", server.url, "--config", tiny]) == 0
        assert f"does not report its version (tag_name 'unknown'); the pipeline needs a KFP backend >= {floor}" \
            in capsys.readouterr().out
        assert len(server.state.runs) == 1


# --------------------------------------------------------------------------- multi-user Kubeflow


TOKEN = "projected-sa-token-3c1f"  # what the chart's projected ServiceAccount token volume holds


@pytest.fixture
def multi_user(no_s3, tmp_path, monkeypatch):
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    monkeypatch.setenv("KF_PIPELINES_SA_TOKEN_PATH", str(token_file))
    with FakeKFP(multi_user=True, token=TOKEN, namespaces={"team-a"}) as server:
        yield server


def _raw(server, method, path, body=None, headers=None):
    import urllib.error
    import urllib.request

    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(server.url + path, data=data, method=method,
                                 headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req) as resp:
            return resp.status, json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def test_fake_multi_user_server_answers_as_kubeflow_does(multi_user):
    s, auth = multi_user, {"Authorization": f"Bearer {TOKEN}"}
    status, health = _raw(s, "GET", "/apis/v2beta1/healthz")  # no authentication needed
    assert status == 200 and health["multi_user"] is True and health["tag_name"] == "2.15.0"
    status, body = _raw(s, "GET", "/apis/v2beta1/experiments", headers=auth)
    assert (status, body["code"]) == (400, 3)
    assert body["message"] == "Invalid input error: An experiment cannot have an empty namespace in multi-user mode"
    status, body = _raw(s, "GET", "/apis/v2beta1/experiments?namespace=team-a")
    assert (status, body["code"]) == (401, 16)
    assert body["message"] == "Request header error: there is no user identity header."
    assert _raw(s, "GET", "/apis/v2beta1/experiments?namespace=team-a",
                headers={"Authorization": "Bearer wrong"})[0] == 401
    assert _raw(s, "GET", "/apis/v2beta1/experiments?namespace=team-b", headers=auth)[0] == 403
    assert _raw(s, "GET", "/apis/v2beta1/experiments?namespace=team-a", headers=auth)[0] == 200
    assert _raw(s, "GET", "/apis/v2beta1/recurringruns", headers=auth)[0] == 400


def test_multi_user_without_namespace_is_refused_clearly(repo_root, multi_user, capsys):
    assert cli.main(["submit", "--host", multi_user.url, "--config", str(repo_root / "configs/tiny.yaml")]) == 2
    err = capsys.readouterr().err
    assert "--namespace is required" in err and "multi-user" in err
    assert [r.path for r in multi_user.requests if r.method != "GET"] == []


def test_multi_user_submit_schedule_and_delete(repo_root, multi_user, capsys):
    tiny = str(repo_root / "configs/tiny.yaml")
    assert cli.main(["submit", "--host", multi_user.url, "--config", tiny, "--namespace", "team-a",
                     "--experiment", "exp-mu"]) == 0
    (exp,) = multi_user.state.experiments.values()
    assert (exp["display_name"], exp["namespace"]) == ("exp-mu", "team-a")
    assert len(multi_user.state.runs) == 1
    schedule = ["schedule", "--host", multi_user.url, "--config", tiny, "--namespace", "team-a",
                "--experiment", "nightly-mu"]
    assert cli.main([*schedule, "--cron", "0 0 2 * * *"]) == 0
    assert len(multi_user.state.recurring_runs) == 1
    assert cli.main(["schedule", "--delete", "--host", multi_user.url, "--namespace", "team-a",
                     "--experiment", "nightly-mu"]) == 0
    assert multi_user.state.recurring_runs == {}
    assert "deleted 1 recurring run(s) named 'nightly-mu'" in capsys.readouterr().out
    # every request but healthz carried the projected token
    assert all(r.headers.get("authorization") == f"Bearer {TOKEN}" for r in multi_user.requests
               if not r.path.endswith("/healthz"))
    # another profile's namespace is refused by the server, in one line
    assert cli.main(["submit", "--host", multi_user.url, "--config", tiny, "--namespace", "team-b"]) == 1
    assert "HTTP 403" in capsys.readouterr().err


# --------------------------------------------------------------------------- schedule --delete


def test_schedule_delete_removes_only_the_named_recurring_run(repo_root, kfp_server, no_s3, capsys):
    base = ["schedule", "--host", kfp_server.url, "--config", str(repo_root / "configs/tiny.yaml"),
            "--experiment", "nightly", "--cron", "0 0 2 * * *"]
    assert cli.main(base) == 0
    assert cli.main([*base, "--name", "keep-me"]) == 0
    assert cli.main(["schedule", "--delete", "--host", kfp_server.url, "--experiment", "nightly"]) == 0
    assert [r["display_name"] for r in kfp_server.state.recurring_runs.values()] == ["keep-me"]
    # nothing (left) to delete, or no such experiment: said, exit 0 (uninstalling twice must not fail)
    assert cli.main(["schedule", "--delete", "--host", kfp_server.url, "--experiment", "nightly"]) == 0
    assert cli.main(["schedule", "--delete", "--host", kfp_server.url, "--experiment", "never-created"]) == 0
    assert capsys.readouterr().out.count("nothing to delete") == 2


def test_schedule_needs_a_cron_unless_delete(repo_root, kfp_server, no_s3, capsys):
    assert cli.main(["schedule", "--host", kfp_server.url, "--config", str(repo_root / "configs/tiny.yaml")]) == 2
    assert "--cron is required" in capsys.readouterr().err
    assert kfp_server.requests == []
