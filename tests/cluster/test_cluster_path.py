"""The cluster path's run semantics (issue 13): what `submit` sends (KFP cache per `--cache/--no-cache`, the
run's service account, no config written from the laptop), the run-opening/-closing tasks executed for real
against SeaweedFS as a pod would run them (lease per KFP run, config stored from inside, a second KFP run of
the run id refused), and the one artifact store: KFP output artifacts are pointers to the project bucket,
followed on another machine by download, and a stale pointer is an error, never a silent mix."""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from s3_fixtures import unique_bucket

sys.path.insert(0, str(Path(__file__).parent))
from fake_kfp import FakeKFP  # noqa: E402

from ensemw2s import cli  # noqa: E402
from ensemw2s.errors import ClusterError, CorruptArtifactError  # noqa: E402
from ensemw2s.steps import keys  # noqa: E402

RUN_TASKS = ("start-run", "end-run")  # keys.START_RUN, keys.END_RUN


@pytest.fixture
def kfp_server():
    with FakeKFP() as server:
        yield server


def _tasks(spec: dict) -> dict:
    dags = [spec["root"]["dag"]] + [c["dag"] for c in spec["components"].values() if "dag" in c]
    return {t["taskInfo"]["name"]: t for d in dags for t in d["tasks"].values()}


def _submit(repo_root, kfp_server, *extra) -> dict:
    rc = cli.main(["submit", "--host", kfp_server.url, "--config", str(repo_root / "configs/tiny.yaml"),
                   "--run-id", "cache-test", *extra])
    assert rc == 0
    (create,) = kfp_server.calls("POST", r"/apis/v2beta1/runs")
    return create.json


@pytest.mark.parametrize("flag", [None, "--no-cache", "--cache"])
def test_submit_sets_kfp_caching_per_flag_and_never_for_the_run_tasks(repo_root, kfp_server, flag, monkeypatch):
    monkeypatch.delenv("S3_ENDPOINT_URL", raising=False)
    body = _submit(repo_root, kfp_server, *([flag] if flag else []))
    tasks = _tasks(body["pipeline_spec"]["pipeline_spec"])
    steps = set(keys.run_steps(2))
    assert steps | set(RUN_TASKS) == set(tasks)
    for name, task in tasks.items():
        cached = task.get("cachingOptions", {}).get("enableCache", False)
        assert cached == (flag == "--cache" and name in steps), name


def test_submit_sends_the_service_account_and_stores_nothing_from_the_laptop(repo_root, kfp_server, s3_env,
                                                                            capsys):
    """Item 8: the laptop may reach no S3 at all; here it can, and still writes nothing: the pipeline's
    start-run step stores the config from inside the cluster."""
    from ensemw2s.config import StorageConfig
    from ensemw2s.storage import Store

    bucket = unique_bucket()
    st = Store.from_config(StorageConfig(bucket=bucket))
    st.check()
    body = _submit(repo_root, kfp_server, "--set", f"storage.bucket={bucket}",
                   "--set", "resources.service_account=ensemw2s-runner")
    assert body["service_account"] == "ensemw2s-runner"
    assert st.list_steps("cache-test") == []
    out = capsys.readouterr().out
    assert "start-run step takes the run id's lease and stores the config" in out


# --------------------------------------------------------------------------- start-run / end-run, for real


def _storage_json(bucket: str) -> str:
    from ensemw2s.config import StorageConfig, section_to_json

    return section_to_json(StorageConfig(bucket=bucket))


def _start_run(repo_root, bucket: str, run_id: str, **over):
    from components.steps import start_run

    from ensemw2s.config import load_config
    from ensemw2s.steps.stepio import task_configs

    cfg = load_config(repo_root / "configs/tiny.yaml")
    cf = task_configs(cfg)
    kw = dict(run_id=run_id, seed=7, rounds=cfg.boosting.rounds, data_cfg=cf["data"], experts_cfg=cf["experts"],
              boosting_cfg=cf["boosting"], ensemble_cfg=cf["ensemble"], student_cfg=cf["student"],
              eval_cfg=cf["eval"], resources_cfg=cf["resources"], storage_cfg=_storage_json(bucket))
    kw.update(over)
    start_run(**kw)
    return cfg


def test_run_tasks_hold_one_lease_per_kfp_run_and_store_the_config(repo_root, s3_env, monkeypatch):
    from components.steps import end_run

    from ensemw2s import provenance
    from ensemw2s.config import StorageConfig, to_dict
    from ensemw2s.lease import HOLDER_ENV
    from ensemw2s.steps.stepio import StepIO
    from ensemw2s.storage import Store

    bucket = unique_bucket()
    st = Store.from_config(StorageConfig(bucket=bucket))
    st.check()
    monkeypatch.setenv(HOLDER_ENV, "ensemw2s-wf-aaaa")  # what the downward API gives every pod of a KFP run
    cfg = _start_run(repo_root, bucket, "shared-id")
    stored = provenance.stored_config(st, "shared-id")  # what rerun-step reads: the run's config, its seed
    assert to_dict(stored) == {**to_dict(cfg), "seed": 7, "storage": {**to_dict(cfg.storage), "bucket": bucket}}
    # a step of the same KFP run renews the lease while it works
    io = StepIO("split_data", run_id="shared-id", storage=StorageConfig(bucket=bucket), config_hash="x")
    assert io.lease is not None and io.lease.read().holder == "kfp:ensemw2s-wf-aaaa"
    io.lease.stop_heartbeat()
    # a second KFP run given the same run id (a UI "clone run", a resubmission) is refused at its first task
    monkeypatch.setenv(HOLDER_ENV, "ensemw2s-wf-bbbb")
    with pytest.raises(ClusterError, match="run id 'shared-id' is in use.*held by kfp:ensemw2s-wf-aaaa"):
        _start_run(repo_root, bucket, "shared-id")
    with pytest.raises(ClusterError, match="held by kfp:ensemw2s-wf-aaaa"):  # ...and at any step
        StepIO("split_data", run_id="shared-id", storage=StorageConfig(bucket=bucket), config_hash="x")
    end_run(run_id="shared-id", storage_cfg=_storage_json(bucket))  # not its lease: nothing released
    monkeypatch.setenv(HOLDER_ENV, "ensemw2s-wf-aaaa")
    end_run(run_id="shared-id", storage_cfg=_storage_json(bucket))  # the first run ends
    monkeypatch.setenv(HOLDER_ENV, "ensemw2s-wf-bbbb")
    _start_run(repo_root, bucket, "shared-id")  # now the second may run


def test_start_run_refuses_a_config_that_does_not_match_the_compiled_rounds(repo_root, s3_env):
    from ensemw2s.errors import ConfigError

    with pytest.raises(ConfigError, match="compiled for 5 rounds"):
        _start_run(repo_root, unique_bucket(), "rounds-mismatch", rounds=5)


# --------------------------------------------------------------------------- one artifact store


def _artifact(path: Path):
    return SimpleNamespace(path=str(path), metadata={})


def test_kfp_artifacts_are_pointers_followed_by_download_and_checked(repo_root, tiny_assets, s3_env, tmp_path,
                                                                     monkeypatch):
    from components.steps import pseudo_label, split_data

    from ensemw2s.config import StorageConfig, load_config
    from ensemw2s.steps.stepio import POINTER, StepIO, kfp_work_dir, local_matches, task_configs
    from ensemw2s.storage import Store

    bucket = unique_bucket()
    st = Store.from_config(StorageConfig(bucket=bucket))
    st.check()
    cfg = load_config(repo_root / "configs/tiny.yaml")
    cf = task_configs(cfg)
    kfp = tmp_path / "kfp"  # the task's output folders, as the KFP launcher gives them
    splits, state = _artifact(kfp / "split" / "splits"), _artifact(kfp / "split" / "state")
    split_data(data_cfg=cf["data"], weak_cfg=cf["split_weak"], seed=0, run_id="ptr", storage_cfg=_storage_json(bucket),
               splits=splits, state=state)
    # the KFP artifact is one pointer file; its metadata names the object store's copy
    assert [p.name for p in Path(splits.path).iterdir()] == [POINTER]
    assert splits.metadata["uri"] == f"s3://{bucket}/runs/ptr/split_data/splits/"
    assert splits.metadata["files"] >= 5 and splits.metadata["bytes"] > 0
    assert st.is_complete("ptr", "split_data", "splits")
    work = kfp_work_dir(splits.path, "ptr", "split_data", "splits")
    assert local_matches(work, st.get_manifest("ptr", "split_data", "splits"))
    # a downstream task given the pointers (gold labels: no model needed)
    labels = _artifact(kfp / "gold" / "labels")
    pseudo_label(ensemble_cfg=cf["no_ensemble"], source="gold", rounds=2, run_id="ptr",
                 storage_cfg=_storage_json(bucket), splits=_artifact(Path(splits.path)),
                 state=_artifact(Path(state.path)), labels=labels)
    assert labels.metadata["uri"] == f"s3://{bucket}/runs/ptr/pseudo_label-gold/labels/"
    assert st.get_manifest("ptr", "pseudo_label-gold", "labels")["files"]

    # another machine (a pod): the producer's work folder is not there, so the input is downloaded
    stale_pointer = tmp_path / "old-pointer"
    shutil.copytree(splits.path, stale_pointer)
    shutil.rmtree(work)
    monkeypatch.setenv("ENSEMW2S_SCRATCH", str(tmp_path / "scratch"))
    io = StepIO("pseudo_label-gold", run_id="ptr", storage=StorageConfig(bucket=bucket), config_hash="y")
    got = io.fetch(splits.path, keys.SPLIT_DATA, "splits")
    assert got == tmp_path / "scratch" / "runs" / "ptr" / "split_data" / "splits"
    assert local_matches(got, st.get_manifest("ptr", "split_data", "splits"))

    # the step recomputed with another config since: the old pointer no longer matches, and says so
    cf2 = task_configs(load_config(repo_root / "configs/tiny.yaml", ["data.hard_test=13"]))
    split_data(data_cfg=cf2["data"], weak_cfg=cf2["split_weak"], seed=0, run_id="ptr",
               storage_cfg=_storage_json(bucket), splits=_artifact(kfp / "split2" / "splits"),
               state=_artifact(kfp / "split2" / "state"))
    with pytest.raises(CorruptArtifactError, match="was recomputed since this pointer was written.*--no-cache"):
        io.fetch(str(stale_pointer), keys.SPLIT_DATA, "splits")
    pointer = json.loads((stale_pointer / POINTER).read_text())
    assert pointer["digest"] == splits.metadata["digest"] != st_digest(st, "ptr", "split_data", "splits")


def st_digest(st, run_id, step, output) -> str:
    from ensemw2s.steps.stepio import manifest_digest

    return manifest_digest(st.get_manifest(run_id, step, output))


def test_start_run_refuses_a_config_whose_student_stage_is_not_the_compiled_one(repo_root, s3_env):
    """student.enabled removes steps from the DAG: a run submitted with the other value (its student config is a
    run parameter) fails at its first task instead of running a DAG its report would misdescribe."""
    from ensemw2s.config import load_config, section_to_json
    from ensemw2s.errors import ConfigError

    with pytest.raises(ConfigError, match="student.enabled: true but this pipeline was compiled without"):
        _start_run(repo_root, unique_bucket(), "students-mismatch", students=False)
    off = load_config(repo_root / "configs/tiny.yaml", ["student.enabled=false"])
    with pytest.raises(ConfigError, match="student.enabled: false but this pipeline was compiled with the student"):
        _start_run(repo_root, unique_bucket(), "students-mismatch", student_cfg=section_to_json(off.student))
