"""`ensemw2s rerun-step`: one step of a stored run again, from object storage alone, as attempt <n>.

The tiny pipeline runs once per module against the real SeaweedFS server; then steps are rerun (without
Docker) with overrides, and the attempt's outputs, the untouched original and the printed diff are checked.
The Docker command itself is checked as a string (and the missing-engine error), since CI has no engine."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from s3_fixtures import unique_bucket

RUN_ID = "rerun-base"
pytestmark = pytest.mark.s3


def _env(s3) -> dict:
    env = dict(os.environ)
    env.update(S3_ENDPOINT_URL=s3.endpoint, AWS_ACCESS_KEY_ID=s3.access_key,
               AWS_SECRET_ACCESS_KEY=s3.secret_key, AWS_DEFAULT_REGION="us-east-1", ENSEMW2S_PROGRESS="0")
    env.pop("ENSEMW2S_ATTEMPT", None)
    return env


def _cli(env, *args, timeout=600, cwd=None):
    return subprocess.run([sys.executable, "-m", "ensemw2s.cli", *args], env=env, capture_output=True,
                          text=True, timeout=timeout, cwd=cwd, check=False)


@pytest.fixture(scope="module")
def tiny_run(repo_root, tiny_assets, s3_server):
    """The tiny pipeline, run once: (bucket, env)."""
    bucket = unique_bucket()
    env = _env(s3_server)
    res = _cli(env, "run", "--config", str(repo_root / "configs/tiny.yaml"),
               "--set", f"storage.bucket={bucket}", "--run-id", RUN_ID, timeout=900, cwd=repo_root)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return bucket, env


def _store(bucket):
    from ensemw2s.config import StorageConfig
    from ensemw2s.storage import Store

    return Store.from_config(StorageConfig(bucket=bucket))


def _rerun(tiny_run, step, *extra):
    bucket, env = tiny_run
    return _cli(env, "rerun-step", "--run-id", RUN_ID, "--step", step, "--set", f"storage.bucket={bucket}",
                *extra)


def test_rerun_evaluate_experts_with_an_override(tiny_run, s3_env):
    st = _store(tiny_run[0])
    before = st.get_manifest(RUN_ID, "evaluate-experts", "eval")
    res = _rerun(tiny_run, "evaluate-experts", "--set", "eval.generation=false")
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    # the attempt is published beside the original, with a manifest, and the original is untouched
    assert st.is_complete(RUN_ID, "evaluate-experts.attempt-1", "eval")
    man = st.get_manifest(RUN_ID, "evaluate-experts.attempt-1", "eval")
    assert man["producer"] == "evaluate-experts.attempt-1" and man["run_id"] == RUN_ID
    assert st.get_manifest(RUN_ID, "evaluate-experts", "eval") == before
    # the diff: generation accuracies are gone with eval.generation=false, log-likelihood ones unchanged
    out = res.stdout
    assert "eval/eval.json: original -> attempt 1" in out
    assert "accuracy.ensemble|hard_test|generation: " in out and "-> (absent)" in out
    assert "accuracy.ensemble|hard_test|loglik" not in out
    assert "keys unchanged" in out
    assert f"runs/{RUN_ID}/evaluate-experts.attempt-1/" in out


def test_rerun_update_weights_then_next_attempt_numbers(tiny_run, s3_env):
    st = _store(tiny_run[0])
    before = st.get_manifest(RUN_ID, "update_weights-r1", "state")
    res = _rerun(tiny_run, "update_weights-r1", "--set", "boosting.on_nonpositive_alpha=stop")
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert st.is_complete(RUN_ID, "update_weights-r1.attempt-1", "state")
    assert st.get_manifest(RUN_ID, "update_weights-r1", "state") == before
    assert "state/state.json: original -> attempt 1" in res.stdout
    # weights are recomputed from the original run's inputs: same numbers, only the recorded paths differ
    assert "experts.0.alpha" not in res.stdout and "experts.0.path:" in res.stdout
    res = _rerun(tiny_run, "update_weights-r1")
    assert res.returncode == 0, res.stderr[-2000:]
    assert st.is_complete(RUN_ID, "update_weights-r1.attempt-2", "state")
    res = _rerun(tiny_run, "update_weights-r1", "--attempt", "1")
    assert res.returncode == 1 and "attempt 1 of update_weights-r1 already exists" in res.stderr


def test_unknown_or_unsafe_step_names(tiny_run, s3_env):
    res = _rerun(tiny_run, "train_expert-r9")
    assert res.returncode == 2
    assert "valid steps: split_data, train_single, train_expert-r1, update_weights-r1, train_expert-r2" in res.stderr
    assert "evaluate-experts" in res.stderr and "report" in res.stderr
    for bad in ("../report", "report/x", "report\x07"):
        res = _rerun(tiny_run, bad)
        assert res.returncode == 2 and "not a step name" in res.stderr, bad


def test_unknown_run_says_so(tiny_run, s3_env):
    bucket, env = tiny_run
    res = _cli(env, "rerun-step", "--run-id", "no-such-run", "--step", "report",
               "--set", f"storage.bucket={bucket}")
    assert res.returncode == 1 and "run 'no-such-run' has no stored config" in res.stderr


def test_docker_without_an_engine_is_a_clear_error(tiny_run, s3_env):
    from ensemw2s.rerun import docker_available

    if docker_available()[0]:
        pytest.skip("a Docker engine is reachable here; this test is about its absence")
    steps = _store(tiny_run[0]).list_steps(RUN_ID)
    res = _rerun(tiny_run, "evaluate-experts", "--docker")
    assert res.returncode == 1
    assert "--docker: no Docker engine is reachable here" in res.stderr and "without --docker" in res.stderr
    assert _store(tiny_run[0]).list_steps(RUN_ID) == steps  # nothing was started


def test_docker_command_passes_secrets_by_name_only(monkeypatch):
    from ensemw2s.rerun import docker_command

    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "docker-sentinel-secret")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIADOCKERSENTINEL")
    step = [sys.executable, "-m", "ensemw2s.steps.evaluate", "--config", "/w/config.yaml", "--run-id", "r1",
            "--target", "experts", "--splits", "/w/in/splits", "--out", "/w/out/eval"]
    cmd = docker_command("ghcr.io/ensemw2s/ensemw2s:0.1.0-cpu", step, workdir=Path("/w"), attempt=3,
                         assets_home=Path("/home/u/.cache/ensemw2s"), user="1000:1000")
    line = " ".join(cmd)
    assert line == (
        "docker run --rm --network host --user 1000:1000 -e S3_ENDPOINT_URL -e AWS_ACCESS_KEY_ID "
        "-e AWS_SECRET_ACCESS_KEY -e AWS_SESSION_TOKEN -e AWS_DEFAULT_REGION -e ENSEMW2S_ATTEMPT=3 "
        "-e HOME=/w -v /w:/w -e ENSEMW2S_HOME=/home/u/.cache/ensemw2s "
        "-v /home/u/.cache/ensemw2s:/home/u/.cache/ensemw2s "
        "ghcr.io/ensemw2s/ensemw2s:0.1.0-cpu python -m ensemw2s.steps.evaluate --config /w/config.yaml "
        "--run-id r1 --target experts --splits /w/in/splits --out /w/out/eval")
    assert "sentinel" not in line.lower()


def test_every_step_maps_to_a_module_and_flags():
    from ensemw2s.rerun import step_command
    from ensemw2s.steps.keys import run_steps

    specs = run_steps(2)
    assert list(specs) == [
        "split_data", "train_single", "train_expert-r1", "update_weights-r1", "train_expert-r2", "update_weights-r2",
        "pseudo_label-ensemble", "train_student-ensemble", "pseudo_label-single", "train_student-single",
        "pseudo_label-gold", "train_student-gold", "evaluate-experts", "evaluate-student-ensemble",
        "evaluate-student-single", "evaluate-student-gold", "report"]
    import importlib

    for name, spec in specs.items():  # every flag is one the step's own parser accepts
        argv = step_command(spec, config_path=Path("/w/c.yaml"), run_id="r", workdir=Path("/w"))
        mod = importlib.import_module(f"ensemw2s.steps.{spec.module}")
        args = mod.build_parser().parse_args(argv[3:])
        assert args.run_id == "r", name
        inputs = [a for a in argv if a.startswith("/w/in/")]
        assert all(not Path(a).exists() for a in inputs)  # absent: fetched from the original run


FAKE_DOCKER = r'''#!{python}
"""A stand-in `docker` (no engine here): `info` answers, `run` is logged and its step is executed the way the
container would run it (the -e variables, the command after the image), on this machine."""
import json, os, subprocess, sys

args = sys.argv[1:]
if args[:1] == ["info"]:
    print("27.0.0-fake")
    raise SystemExit(0)
with open(os.environ["FAKE_DOCKER_LOG"], "a") as fh:
    fh.write(json.dumps(args) + "\n")
assert args[0] == "run", args
env, i, rest = dict(os.environ), 1, args[1:]
takes_value = {{"--network", "--gpus", "--user", "-e", "-v"}}
while rest[0].startswith("-"):
    opt = rest.pop(0)
    if opt in takes_value:
        value = rest.pop(0)
        if opt == "-e" and "=" in value:
            k, v = value.split("=", 1)
            env[k] = v
image, command = rest[0], rest[1:]
assert command[0] == "python", command
raise SystemExit(subprocess.run([sys.executable, *command[1:]], env=env).returncode)
'''


def test_docker_reruns_gpu_steps_in_the_cuda_image_with_gpus(tiny_run, s3_env, tmp_path):
    """Item 9: `rerun-step --docker` reproduces a GPU step as the cluster ran it (resources.gpu_image,
    `--gpus all`), a CPU step in resources.image without GPUs; the step table says which is which."""
    from ensemw2s.config import load_config

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    docker = bin_dir / "docker"
    docker.write_text(FAKE_DOCKER.format(python=sys.executable))
    docker.chmod(0o755)
    log = tmp_path / "docker.log"
    bucket, env = tiny_run
    env = dict(env, PATH=f"{bin_dir}{os.pathsep}{env['PATH']}", FAKE_DOCKER_LOG=str(log))
    res = _cli(env, "rerun-step", "--run-id", RUN_ID, "--step", "evaluate-experts", "--set",
               f"storage.bucket={bucket}", "--docker")
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    res = _cli(env, "rerun-step", "--run-id", RUN_ID, "--step", "update_weights-r1", "--set",
               f"storage.bucket={bucket}", "--docker")
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    runs = [json.loads(line) for line in log.read_text().splitlines()]
    assert len(runs) == 2
    cfg = load_config(Path(__file__).resolve().parents[2] / "configs/tiny.yaml")
    gpu_run, cpu_run = runs
    assert gpu_run[gpu_run.index("--gpus") + 1] == "all"
    assert cfg.resources.gpu_image in gpu_run and cfg.resources.image not in gpu_run
    assert "--gpus" not in cpu_run and cfg.resources.image in cpu_run and cfg.resources.gpu_image not in cpu_run
    st = _store(bucket)  # and each step did run, publishing its attempt beside the original
    assert any(s.startswith("evaluate-experts.attempt-") and st.is_complete(RUN_ID, s, "eval")
               for s in st.list_steps(RUN_ID))
    assert any(s.startswith("update_weights-r1.attempt-") and st.is_complete(RUN_ID, s, "state")
               for s in st.list_steps(RUN_ID))
