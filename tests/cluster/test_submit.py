"""`ensemw2s submit` / `schedule` against a fake KFP API server (tests/cluster/fake_kfp.py) driven by the real
kfp.Client: what is sent (pipeline spec, run_id parameter, 6-field cron), what is never sent (secrets, a bad
cron), and that scheduling twice under one name leaves one recurring run. Also the ablation pipeline's shape
(compiled and parsed) and the compare step's table from fake metrics."""
from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import pytest
import yaml

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
    assert f"{kfp_server.url}/#/runs/details/{kfp_id}" in out
    assert "run-summary/config.json was not stored" in out  # no S3 endpoint here: said, not silently skipped


def test_submit_generates_a_run_id(repo_root, kfp_server, no_s3, capsys):
    tiny = str(repo_root / "configs/tiny.yaml")
    assert cli.main(["submit", "--host", kfp_server.url, "--config", tiny]) == 0
    (create,) = kfp_server.calls("POST", r"/apis/v2beta1/runs")
    rid = create.json["runtime_config"]["parameters"]["run_id"]
    assert rid and rid in capsys.readouterr().out
    from ensemw2s.storage import validate_name

    validate_name("run id", rid)


@pytest.mark.s3
def test_submit_stores_the_config_for_rerun_step(repo_root, kfp_server, s3_env, store_factory, capsys):
    st = store_factory()
    rc = cli.main(["submit", "--host", kfp_server.url, "--config", str(repo_root / "configs/tiny.yaml"),
                   "--set", f"storage.bucket={st.bucket}", "--run-id", "sub-stored"])
    assert rc == 0, capsys.readouterr()
    stored = st.get_json("sub-stored", "run-summary", "config.json")
    assert stored["storage"]["bucket"] == st.bucket and stored["boosting"]["rounds"] == 2
    _no_secrets(kfp_server, [s3_env.access_key, s3_env.secret_key])


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
    assert len([t for t in _tasks(spec) if t.startswith("train_expert")]) == 6 * 2 * 1  # 6 points x 2 rounds
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


def test_ablation_pipeline_structure(repo_root, tmp_path):
    from pipelines.ablations import compile_ablations

    ab = _ablation(repo_root, "grid.boosting.rounds=[1,2]", "grid.boosting.alpha_rule=[prior,samme]",
                   "grid.boosting.sampling=[resample]", "grid.data.easy,data.hard=[[arc_easy,sciq]]",
                   "seeds=[0,1,2]")
    assert len(ab.points) == 4
    spec = yaml.safe_load(compile_ablations(ab, tmp_path / "abl.yaml").read_text().split("\n---\n")[0])
    root = spec["root"]["dag"]["tasks"]
    (loop_name,) = [n for n, t in root.items() if t.get("parameterIterator")]
    loop = root[loop_name]
    assert loop["parameterIterator"]["items"]["inputParameter"] == "pipelinechannel--seeds"
    assert spec["root"]["inputDefinitions"]["parameters"]["seeds"]["defaultValue"] == [0, 1, 2]
    body = spec["components"][loop["componentRef"]["name"]]["dag"]["tasks"]
    subs = {n: t for n, t in body.items() if "dag" in spec["components"][t["componentRef"]["name"]]}
    assert sorted(t["taskInfo"]["name"] for t in subs.values()) == sorted(p.name for p in ab.points)
    for t in subs.values():  # each sub-pipeline gets its own run id and the loop's seed
        assert t["inputs"]["parameters"]["seed"]["componentInputParameter"].endswith("seeds-loop-item")
        producer = t["inputs"]["parameters"]["run_id"]["taskOutputParameter"]["producerTask"]
        assert producer.startswith("child-run-id")
    rounds = {}
    for t in subs.values():
        sub = spec["components"][t["componentRef"]["name"]]["dag"]["tasks"]
        rounds[t["taskInfo"]["name"]] = sum(s["taskInfo"]["name"].startswith("train_expert")
                                            for s in sub.values())
    assert sorted(rounds.values()) == [1, 1, 2, 2]
    assert loop["dependentTasks"] == ["plan"]  # the plan (child configs stored) first...
    assert not [i for i in loop["inputs"]["parameters"].values() if "taskOutputParameter" in i]  # ...no data
    compare = next(t for t in root.values() if t["taskInfo"]["name"] == "compare")
    assert loop_name in compare["dependentTasks"]  # after every grid point and seed
    assert compare["inputs"]["parameters"]["base_run_id"]["taskOutputParameter"]["producerTask"] == "plan"


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
    for r in runs:
        base = 0.5 if r["point"].endswith("prior") else 0.6
        metrics[r["run_id"]] = {m: base + 0.1 * r["seed"] for m in METRICS}
    metrics["abl-base-g01-samme-s2"] = None  # a missing report is reported, not fatal
    summary = write_outputs(tmp_path, runs, metrics, ["boosting.alpha_rule"], "abl-base")
    rows = {r["point"]: r for r in summary["table"]}
    assert rows["g00-prior"]["ensemble_acc_ood_mean"] == pytest.approx(0.6)
    assert rows["g00-prior"]["ensemble_acc_ood_std"] == pytest.approx(0.1)
    assert rows["g01-samme"]["seeds"] == 2 and rows["g01-samme"]["pgr_ens_mean"] == pytest.approx(0.65)
    md = (tmp_path / "compare.md").read_text()
    assert "| g00-prior | prior | 3/3 | 0.600 ± 0.100" in md and "abl-base-g01-samme-s2" in md
    with open(tmp_path / "compare.csv") as fh:
        table = list(csv.DictReader(fh))
    assert [r["point"] for r in table] == ["g00-prior", "g01-samme"]
    assert float(table[1]["ensemble_acc_ood_mean"]) == pytest.approx(0.65)
    with open(tmp_path / "runs.csv") as fh:
        assert len(list(csv.DictReader(fh))) == 6
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
