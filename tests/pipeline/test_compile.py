"""Compile the pipeline and check its structure by parsing the YAML (no golden files).

Compiled in-process (the same function `ensemw2s compile` calls); one test runs the real command once, and the
`python pipelines/*.py` scripts their docstrings give. The cache-key test recomputes, from the compiled spec,
what KFP's cache key of each task is made of (component, constant parameters, the producers of its input
artifacts) and checks that a config change moves exactly the tasks that read the changed setting.
"""
import hashlib
import json
import subprocess
import sys
import time

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
    # every task is named by its step key, and the table and the DAG hold the same steps, plus the two tasks
    # that open and close a run on a cluster
    assert sorted(by_display) == sorted([*keys.run_steps(rounds), keys.START_RUN, keys.END_RUN])
    local, _, _ = _compile(repo_root, tmp_path, f"boosting.rounds={rounds}", local=True)
    assert sorted(_by_display(local)) == sorted(keys.run_steps(rounds))  # kfp.local: the local run holds the lease
    # start-run (lease, config) before the first step; end-run (release) after the report
    assert by_display[keys.SPLIT_DATA][1]["dependentTasks"] == [by_display[keys.START_RUN][0]]
    assert by_display[keys.END_RUN][1]["dependentTasks"] == [by_display[keys.REPORT][0]]
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
        assert "from ensemw2s" in e["container"]["command"][-1]  # a thin wrapper around the package


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
    assert sorted(t["taskInfo"]["name"] for t in _tasks(spec).values()) == sorted(
        [*keys.run_steps(2), keys.START_RUN, keys.END_RUN])


def test_the_pipeline_scripts_run_as_their_docstrings_say(repo_root, tmp_path):
    """`python pipelines/ensemw2s.py` must not import itself as the `ensemw2s` package."""
    for script, config, extra in (("ensemw2s.py", "configs/tiny.yaml", []),
                                  ("ablations.py", "configs/ablations.yaml", ["--set", "seeds=[0]"])):
        out = tmp_path / f"{script}.yaml"
        res = subprocess.run([sys.executable, f"pipelines/{script}", "--config", config, *extra, "-o", str(out)],
                             capture_output=True, text=True, cwd=repo_root, timeout=300)
        assert res.returncode == 0, res.stderr[-2000:]
        assert out.is_file() and "wrote" in res.stdout


def test_too_many_rounds_are_refused_at_once_with_the_limit_and_why(repo_root, tmp_path):
    t0 = time.monotonic()
    res = subprocess.run([sys.executable, "-m", "ensemw2s.cli", "compile", "--config",
                          str(repo_root / "configs/tiny.yaml"), "--set", "boosting.rounds=100000", "--output",
                          str(tmp_path / "x.yaml")], capture_output=True, text=True, cwd=repo_root, timeout=60)
    assert res.returncode == 2, res.stderr[-2000:]
    assert time.monotonic() - t0 < 30
    err = res.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: boosting.rounds: 100000 is out of range; it must be <= 32")
    assert "unrolled" in err[0]  # the reason
    assert not (tmp_path / "x.yaml").exists()


# --------------------------------------------------------------------------- KFP's cache key


def _cache_keys(spec) -> dict:
    """Per task, a digest of what KFP's cache key is made of (backend/src/v2/cacheutils: the input parameter
    values, the input artifacts, the output specs, the container's image and command): constant parameters,
    pipeline parameters by their defaults, and each input artifact by its producer's own digest (a producer
    that reruns makes new artifacts)."""
    root = spec["root"]
    defaults = {k: v.get("defaultValue", f"<{k}>") for k, v in root["inputDefinitions"]["parameters"].items()}
    tasks, comps = root["dag"]["tasks"], spec["components"]
    execs = spec["deploymentSpec"]["executors"]
    memo: dict = {}

    def key(name: str) -> str:
        if name in memo:
            return memo[name]
        t = tasks[name]
        comp = comps[t["componentRef"]["name"]]
        params = {}
        for p, v in t.get("inputs", {}).get("parameters", {}).items():
            if "runtimeValue" in v:
                params[p] = v["runtimeValue"]["constant"]
            elif "componentInputParameter" in v:
                params[p] = defaults[v["componentInputParameter"]]
            else:
                src = v["taskOutputParameter"]
                params[p] = [key(src["producerTask"]), src["outputParameterKey"]]
        arts = {a: [key(v["taskOutputArtifact"]["producerTask"]), v["taskOutputArtifact"]["outputArtifactKey"]]
                for a, v in t.get("inputs", {}).get("artifacts", {}).items()}
        blob = [comp.get("inputDefinitions"), comp.get("outputDefinitions"), execs[comp["executorLabel"]], params,
                arts]
        memo[name] = hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()
        return memo[name]

    return {t["taskInfo"]["name"]: key(n) for n, t in tasks.items()
            if t["taskInfo"]["name"] not in ("start-run", "end-run")}  # never cached


GOLD = {keys.pseudo_label("gold"), keys.train_student("gold"), keys.evaluate("student-gold")}
LABELLED = {keys.pseudo_label(s) for s in ("ensemble", "single")} | {
    keys.train_student(s) for s in ("ensemble", "single")} | {keys.evaluate(f"student-{s}") for s in ("ensemble", "single")}
EXPERTS = {keys.TRAIN_SINGLE} | {keys.train_expert(t) for t in (1, 2)} | {keys.update_weights(t) for t in (1, 2)}
SINGLE = {keys.pseudo_label("single"), keys.train_student("single"), keys.evaluate("student-single")}
STUDENTS = {keys.train_student(s) for s in keys.SOURCES} | {keys.evaluate(f"student-{s}") for s in keys.SOURCES}
EVALS = {keys.evaluate(t) for t in keys.EVAL_TARGETS}


@pytest.mark.parametrize("change,moved", [
    ("ensemble.combine=vote", LABELLED | {keys.evaluate("experts"), keys.REPORT}),
    ("experts.train.lr=0.0001", EXPERTS | LABELLED | {keys.evaluate("experts"), keys.REPORT}),
    ("experts.model=tiny-strong", set(keys.run_steps(2))),  # split_data's base-model state
    ("boosting.alpha_rule=samme", EXPERTS | LABELLED | {keys.evaluate("experts"), keys.REPORT}),
    ("student.train.lr=0.0001", STUDENTS | {keys.REPORT}),
    # which expert is the single baseline: its labels, student and evaluation, and the experts' evaluation
    ("ensemble.single=round1", SINGLE | {keys.evaluate("experts"), keys.REPORT}),
    # round 1 reuses the single expert: the rounds and what follows them, not the single expert itself
    ("boosting.reuse_single=true", EXPERTS - {keys.TRAIN_SINGLE} | LABELLED | {keys.evaluate("experts"),
                                                                               keys.REPORT}),
    # bagging keeps D uniform: update_weights reads it; train_expert gets the same section string (so KFP's key
    # moves for round 1 too, while the step's own reuse check leaves round 1 reusable), the single expert not
    ("boosting.method=bagging", EXPERTS - {keys.TRAIN_SINGLE} | LABELLED | {keys.evaluate("experts"), keys.REPORT}),
    # the answer-level error changes every eps, the single expert's too
    ("boosting.error=answer", EXPERTS | LABELLED | {keys.evaluate("experts"), keys.REPORT}),
    ("eval.batch_size=3", EVALS | {keys.REPORT}),
    ("data.hard_test=13", set(keys.run_steps(2))),
    ("seed=5", set(keys.run_steps(2))),
    # the model steps that take resources.dtype, and what reads their outputs (gold labels load no model)
    ("resources.dtype=bfloat16",
     set(keys.run_steps(2)) - {keys.SPLIT_DATA, keys.pseudo_label("gold")}),
    # the image is part of the key: GPU steps (the table's flag) and what reads their outputs; gold labels run
    # in the CPU image
    ("resources.gpu_image=registry.example.org/other:cuda",
     set(keys.run_steps(2)) - {keys.SPLIT_DATA, keys.pseudo_label("gold")}),
])
def test_cache_key_moves_exactly_with_the_config_a_task_reads(repo_root, tmp_path, change, moved):
    base = _cache_keys(_compile(repo_root, tmp_path, "boosting.rounds=2")[0])
    other = _cache_keys(_compile(repo_root, tmp_path, "boosting.rounds=2", change)[0])
    assert set(base) == set(other) == set(keys.run_steps(2))
    assert {k for k in base if base[k] != other[k]} == moved


def test_without_the_student_stage_the_dag_ends_at_the_experts_evaluation(repo_root, tmp_path):
    spec, _, _ = _compile(repo_root, tmp_path, "student.enabled=false")
    by_display = _by_display(spec)
    assert sorted(by_display) == sorted([*keys.run_steps(2, students=False), keys.START_RUN, keys.END_RUN])
    assert not any(k.startswith(("pseudo_label", "train_student", "evaluate-student")) for k in by_display)
    _, report = by_display[keys.REPORT]
    assert report["dependentTasks"] == [by_display[keys.evaluate("experts")][0]]
    assert by_display[keys.END_RUN][1]["dependentTasks"] == [by_display[keys.REPORT][0]]


def test_more_rounds_reuse_the_rounds_already_run(repo_root, tmp_path):
    two = _cache_keys(_compile(repo_root, tmp_path, "boosting.rounds=2")[0])
    three = _cache_keys(_compile(repo_root, tmp_path, "boosting.rounds=3")[0])
    same = {k for k in two if two[k] == three.get(k)}
    assert same == {keys.SPLIT_DATA} | EXPERTS | GOLD


@pytest.mark.parametrize("cache", [False, True])
def test_the_cache_option_of_every_step_follows_the_flag(repo_root, tmp_path, cache):
    from pipelines.ensemw2s import compile_pipeline

    out = compile_pipeline(load_config(repo_root / "configs/tiny.yaml"), tmp_path / "c.yaml", cache=cache)
    spec = next(yaml.safe_load_all(out.read_text()))
    for name, (_, task) in _by_display(spec).items():
        want = cache and name not in ("start-run", "end-run")
        assert task.get("cachingOptions", {}).get("enableCache", False) is want, name
