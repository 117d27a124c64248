"""Compile the pipeline and check its structure by parsing the YAML (no golden files)."""
import subprocess
import sys

import pytest
import yaml

from ensemw2s.config import load_config


def _compile(repo_root, tmp_path, *overrides, local=False):
    out = tmp_path / "p.yaml"
    args = [sys.executable, "-m", "ensemw2s.cli", "compile", "--config", str(repo_root / "configs/tiny.yaml"),
            "--output", str(out)] + [a for o in overrides for a in ("--set", o)] + (["--local"] if local else [])
    res = subprocess.run(args, capture_output=True, text=True, cwd=repo_root)
    assert res.returncode == 0, res.stderr
    docs = list(yaml.safe_load_all(out.read_text()))
    return docs[0], docs[1:] , out.read_text()


def _tasks(spec):
    return spec["root"]["dag"]["tasks"]


@pytest.mark.parametrize("rounds", [1, 3, 5])
def test_rounds_unrolled_in_order(repo_root, tmp_path, rounds):
    spec, _, _ = _compile(repo_root, tmp_path, f"boosting.rounds={rounds}")
    tasks = _tasks(spec)
    experts = {n: t for n, t in tasks.items() if t["taskInfo"]["name"].startswith("train-expert-r")}
    assert sorted(t["taskInfo"]["name"] for t in experts.values()) == sorted(
        f"train-expert-r{t}" for t in range(1, rounds + 1))
    by_display = {t["taskInfo"]["name"]: (n, t) for n, t in tasks.items()}
    for t in range(1, rounds + 1):
        name, task = by_display[f"train-expert-r{t}"]
        deps = set(task.get("dependentTasks", []))
        prev = by_display["split-data"][0] if t == 1 else by_display[f"update-weights-r{t - 1}"][0]
        assert prev in deps, f"train-expert-r{t} must wait for {prev}"
        uname, utask = by_display[f"update-weights-r{t}"]
        assert name in utask.get("dependentTasks", [])
    # the ensemble pseudo-labels depend on the last round's state
    _, pl = by_display["pseudo-label-ensemble"]
    assert by_display[f"update-weights-r{rounds}"][0] in pl["dependentTasks"]


def test_every_step_is_a_lightweight_component_on_the_project_image(repo_root, tmp_path):
    spec, _, text = _compile(repo_root, tmp_path)
    cfg = load_config(repo_root / "configs/tiny.yaml")
    execs = spec["deploymentSpec"]["executors"]
    images = {e["container"]["image"] for e in execs.values()}
    assert images <= {cfg.resources.image, cfg.resources.gpu_image}
    for e in execs.values():
        cmd = " ".join(e["container"]["command"])
        assert "pip install" not in cmd, "components must not pip-install at run time"
        assert "ensemw2s.steps" in e["container"]["command"][-1]
    names = {t["taskInfo"]["name"] for t in _tasks(spec).values()}
    for required in ("split-data", "pseudo-label-single", "pseudo-label-gold", "train-student-gold",
                     "evaluate-experts", "report"):
        assert required in names


def test_each_task_gets_only_its_section(repo_root, tmp_path):
    spec, _, _ = _compile(repo_root, tmp_path)
    for name, comp in spec["components"].items():
        params = comp.get("inputDefinitions", {}).get("parameters", {})
        if name.startswith("comp-train-expert"):
            assert "student_cfg" not in params and "experts_cfg" in params
        if name.startswith("comp-train-student"):
            assert "experts_cfg" not in params and "boosting_cfg" not in params
