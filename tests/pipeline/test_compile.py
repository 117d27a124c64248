"""Compile the pipeline and check its structure by parsing the YAML (no golden files).

Compiled in-process (the same function `ensemw2s compile` calls); one test runs the real command once.
"""
import subprocess
import sys

import pytest
import yaml

from ensemw2s.config import load_config
from ensemw2s.steps import keys


def _compile(repo_root, tmp_path, *overrides, local=False):
    from pipelines.ensemw2s import compile_pipeline

    out = tmp_path / "p.yaml"
    cfg = load_config(repo_root / "configs/tiny.yaml", list(overrides))
    compile_pipeline(cfg, out, for_cluster=not local)
    docs = list(yaml.safe_load_all(out.read_text()))
    return docs[0], docs[1:], out.read_text()


def _tasks(spec):
    return spec["root"]["dag"]["tasks"]


def _by_display(spec):
    return {t["taskInfo"]["name"]: (n, t) for n, t in _tasks(spec).items()}


@pytest.mark.parametrize("rounds", [1, 3, 5])
def test_rounds_unrolled_in_order(repo_root, tmp_path, rounds):
    spec, _, _ = _compile(repo_root, tmp_path, f"boosting.rounds={rounds}")
    by_display = _by_display(spec)
    # every task is named by its step key, and the table and the DAG hold the same steps
    assert sorted(by_display) == sorted(keys.run_steps(rounds))
    for t in range(1, rounds + 1):
        name, task = by_display[keys.train_expert(t)]
        deps = set(task.get("dependentTasks", []))
        prev = by_display[keys.state_after(t - 1)][0]
        assert prev in deps, f"{keys.train_expert(t)} must wait for {prev}"
        _, utask = by_display[keys.update_weights(t)]
        assert name in utask.get("dependentTasks", [])
    # the ensemble pseudo-labels depend on the last round's state; gold labels need no expert
    _, pl = by_display[keys.pseudo_label("ensemble")]
    assert by_display[keys.update_weights(rounds)][0] in pl["dependentTasks"]
    _, gold = by_display[keys.pseudo_label("gold")]
    assert gold["dependentTasks"] == [by_display[keys.SPLIT_DATA][0]]


def test_every_step_is_a_lightweight_component_on_the_project_image(repo_root, tmp_path):
    spec, _, _ = _compile(repo_root, tmp_path)
    cfg = load_config(repo_root / "configs/tiny.yaml")
    execs = spec["deploymentSpec"]["executors"]
    images = {e["container"]["image"] for e in execs.values()}
    assert images <= {cfg.resources.image, cfg.resources.gpu_image}
    for e in execs.values():
        cmd = " ".join(e["container"]["command"])
        assert "pip install" not in cmd, "components must not pip-install at run time"
        assert "ensemw2s.steps" in e["container"]["command"][-1]


def test_each_task_gets_only_its_section(repo_root, tmp_path):
    spec, _, _ = _compile(repo_root, tmp_path)
    by_display = _by_display(spec)
    tasks = _tasks(spec)

    def params(step_key):
        comp = spec["components"][tasks[by_display[step_key][0]]["componentRef"]["name"]]
        return comp["inputDefinitions"]["parameters"]

    cfg = load_config(repo_root / "configs/tiny.yaml")
    for t in range(1, cfg.boosting.rounds + 1):
        p = params(keys.train_expert(t))
        assert "experts_cfg" in p and "student_cfg" not in p and "eval_cfg" not in p
    for s in keys.SOURCES:
        p = params(keys.train_student(s))
        assert "student_cfg" in p and "experts_cfg" not in p and "boosting_cfg" not in p


def test_the_compile_command(repo_root, tmp_path):
    out = tmp_path / "cli.yaml"
    res = subprocess.run([sys.executable, "-m", "ensemw2s.cli", "compile", "--config",
                          str(repo_root / "configs/tiny.yaml"), "--set", "boosting.rounds=2", "--output", str(out)],
                         capture_output=True, text=True, cwd=repo_root, timeout=300)
    assert res.returncode == 0, res.stderr
    assert "wrote" in res.stdout and "2 boosting rounds" in res.stdout
    spec = next(yaml.safe_load_all(out.read_text()))
    assert sorted(t["taskInfo"]["name"] for t in _tasks(spec).values()) == sorted(keys.run_steps(2))
