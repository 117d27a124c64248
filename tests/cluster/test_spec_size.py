"""Big grids (issue 13, item 6): every pipeline we ship compiles well under the size a KFP backend can store
(its Argo Workflow lives in etcd, 1.5 MiB per object by default), a grid that would not is refused by
`submit`/`schedule`/the compile script with one clear line before anything is sent, and the grid's loop bounds
how many GPU pods it asks for at once."""
from __future__ import annotations

import itertools
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).parent))
from fake_kfp import FakeKFP  # noqa: E402

from ensemw2s import cli  # noqa: E402
from ensemw2s.steps import keys  # noqa: E402

# well under etcd's default 1.5 MiB: the Workflow repeats every component spec and grows with node status
LIMIT = 700_000


def _size(path: Path) -> int:
    return len(Path(path).read_bytes())


@pytest.mark.parametrize("config,overrides", [("configs/default.yaml", []), ("configs/science.yaml", []),
                                              ("configs/default.yaml", ["boosting.rounds=32"])])
def test_main_pipelines_compile_under_the_limit(repo_root, tmp_path, config, overrides):
    from pipelines.ensemw2s import compile_pipeline

    from ensemw2s.config import load_config

    out = compile_pipeline(load_config(repo_root / config, overrides), tmp_path / "main.yaml", for_cluster=True)
    assert _size(out) < LIMIT


def test_the_documented_ablation_grid_compiles_under_the_limit(repo_root, tmp_path):
    from pipelines.ablations import compile_ablations

    from ensemw2s.ablation import load_ablation

    ab = load_ablation(repo_root / "configs/ablations.yaml")
    assert len(ab.points) * len(ab.seeds) == 72  # the grid as documented: 24 points x 3 seeds
    out = compile_ablations(ab, tmp_path / "abl.yaml", for_cluster=True)
    assert _size(out) < LIMIT / 2
    # and it does not grow with the number of grid points: the same grid over 3x the alpha rules and seeds
    big = load_ablation(repo_root / "configs/ablations.yaml", [
        "grid.boosting.alpha_rule=[prior, samme, uniform, binary]", "seeds=[0, 1, 2, 3, 4, 5, 6, 7, 8]"])
    assert len(big.points) * len(big.seeds) == 288
    assert _size(compile_ablations(big, tmp_path / "big.yaml", for_cluster=True)) < _size(out) * 1.1


def _max_parallel_gpu_steps(spec: dict) -> int:
    """The most GPU tasks of one run that no dependency orders (the largest antichain of GPU tasks)."""
    tasks = spec["root"]["dag"]["tasks"]
    deps = {n: set(t.get("dependentTasks", [])) for n, t in tasks.items()}

    def ancestors(n, seen=None):
        seen = set() if seen is None else seen
        for d in deps[n]:
            if d not in seen:
                seen.add(d)
                ancestors(d, seen)
        return seen

    anc = {n: ancestors(n) for n in tasks}
    specs = keys.run_steps(3)
    gpu = [n for n, t in tasks.items() if t["taskInfo"]["name"] in specs and specs[t["taskInfo"]["name"]].gpu]
    best = 0
    for r in range(1, len(gpu) + 1):
        for combo in itertools.combinations(gpu, r):
            if all(a not in anc[b] and b not in anc[a] for a, b in itertools.combinations(combo, 2)):
                best = r
                break
    return best


@pytest.mark.parametrize("max_gpu_pods,runs", [(8, 2), (4, 1), (13, 3)])
def test_the_grid_loop_bounds_the_gpu_pods_it_asks_for(repo_root, tmp_path, max_gpu_pods, runs):
    from pipelines.ablations import compile_ablations
    from pipelines.ensemw2s import compile_pipeline

    from ensemw2s.ablation import load_ablation
    from ensemw2s.config import load_config

    main = next(yaml.safe_load_all(compile_pipeline(load_config(repo_root / "configs/default.yaml"),
                                                    tmp_path / "m.yaml").read_text()))
    per_run = _max_parallel_gpu_steps(main)
    assert per_run == keys.MAX_PARALLEL_GPU_STEPS  # the arithmetic below rests on it
    ab = load_ablation(repo_root / "configs/ablations.yaml", [f"resources.max_gpu_pods={max_gpu_pods}"])
    spec = next(yaml.safe_load_all(compile_ablations(ab, tmp_path / "a.yaml").read_text()))
    loops = _loops(spec)
    assert [len(items) for _, items in loops] == [36, 36]  # rounds 1, rounds 3: 12 points x 3 seeds each
    assert {t["iteratorPolicy"]["parallelismLimit"] for t, _ in loops} == {runs}
    assert runs * per_run <= max_gpu_pods
    ab = load_ablation(repo_root / "configs/ablations.yaml", ["parallelism=1", f"resources.max_gpu_pods={max_gpu_pods}"])
    spec = next(yaml.safe_load_all(compile_ablations(ab, tmp_path / "b.yaml").read_text()))
    # an explicit parallelism below the bound stands
    assert {t["iteratorPolicy"]["parallelismLimit"] for t, _ in _loops(spec)} == {1}


def _loops(spec) -> list:
    """The grid's loops in order, each with its items; each loop after the previous one (one GPU bound for the
    whole grid), all after the plan."""
    tasks = spec["root"]["dag"]["tasks"]
    loops = {n: t for n, t in tasks.items() if "parameterIterator" in t}
    ordered, prev = [], "plan"
    while loops:
        (name,) = [n for n, t in loops.items() if prev in t.get("dependentTasks", [])]
        ordered.append(name)
        prev = name
        del loops[name]
    return [(tasks[n], json.loads(tasks[n]["parameterIterator"]["items"]["raw"])) for n in ordered]


TOO_BIG = ["grid.boosting.rounds=[29, 30, 31, 32]", "seeds=[0]", "grid.boosting.sampling=[resample]",
           "grid.boosting.alpha_rule=[prior]", "grid.data.easy,data.hard=[[arc_easy, sciq]]"]


def test_a_grid_too_big_for_the_backend_is_refused_before_anything_is_sent(repo_root, tmp_path, capsys,
                                                                           monkeypatch):
    monkeypatch.delenv("S3_ENDPOINT_URL", raising=False)
    sets = [a for item in TOO_BIG for a in ("--set", item)]
    with FakeKFP() as server:
        rc = cli.main(["submit", "--host", server.url, "--pipeline", "ablations", "--config",
                       str(repo_root / "configs/ablations.yaml"), *sets])
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 2 and len(err) == 1, err
        assert err[0].startswith("error: the ablation grid (4 points, 4 distinct DAG shapes) compiles to ")
        assert "above the limit of 700 KB" in err[0] and "etcd" in err[0] and "boosting.rounds" in err[0]
        rc = cli.main(["schedule", "--host", server.url, "--pipeline", "ablations", "--cron", "0 0 3 * * *",
                       "--config", str(repo_root / "configs/ablations.yaml"), *sets])
        assert rc == 2 and "above the limit of 700 KB" in capsys.readouterr().err
        assert not server.calls("POST", r".*")  # nothing created
    res = subprocess.run([sys.executable, "pipelines/ablations.py", "--config", "configs/ablations.yaml", *sets,
                          "-o", str(tmp_path / "x.yaml")], capture_output=True, text=True, cwd=repo_root,
                         timeout=600)
    assert res.returncode == 2 and "above the limit of 700 KB" in res.stderr
    assert not (tmp_path / "x.yaml").exists()


def test_the_ablation_dag_loops_over_the_points_of_each_dag_shape(repo_root, tmp_path):
    """The grid's structure (replaces the unrolled one): plan, then per distinct rounds value one loop over its
    (point, seed) items, each item a grid-point task feeding the group's sub-pipeline its run id, seed and
    config strings; compare after every loop, on the plan's base run id."""
    from pipelines.ablations import compile_ablations
    from pipelines.ensemw2s import CONFIG_PARAMS

    from ensemw2s.ablation import load_ablation

    ab = load_ablation(repo_root / "configs/ablations.yaml", [
        "grid.boosting.rounds=[1,2]", "grid.boosting.alpha_rule=[prior,samme]", "grid.boosting.sampling=[resample]",
        "grid.data.easy,data.hard=[[arc_easy,sciq]]", "seeds=[0,1,2]"])
    spec = next(yaml.safe_load_all(compile_ablations(ab, tmp_path / "abl.yaml").read_text()))
    root = spec["root"]["dag"]["tasks"]
    loops = _loops(spec)
    by_rounds = {}
    for task, items in loops:
        body = spec["components"][task["componentRef"]["name"]]["dag"]["tasks"]
        ((point_task, point),) = [(n, t) for n, t in body.items() if t["taskInfo"]["name"] == "grid-point"]
        (sub,) = [t for t in body.values() if "dag" in spec["components"][t["componentRef"]["name"]]]
        params = point["inputs"]["parameters"]
        for field in ("point", "seed"):  # the loop item's fields
            assert params[field]["componentInputParameter"].startswith("pipelinechannel--loop-item-param-")
            assert params[field]["parameterExpressionSelector"] == f'parseJson(string_value)["{field}"]'
        fed = sub["inputs"]["parameters"]
        for name in ("run_id", "seed", *[f"{n}_cfg" for n in CONFIG_PARAMS]):
            assert fed[name]["taskOutputParameter"]["producerTask"] == point_task, name
        sub_dag = spec["components"][sub["componentRef"]["name"]]["dag"]["tasks"]
        rounds = sum(t["taskInfo"]["name"].startswith("train_expert") for t in sub_dag.values())
        by_rounds[rounds] = sorted((i["point"], i["seed"]) for i in items)
    assert sorted(by_rounds) == [1, 2]  # one sub-pipeline per distinct rounds value
    for rounds, items in by_rounds.items():
        names = [p.name for p in ab.points if p.cfg.boosting.rounds == rounds]
        assert items == sorted((n, str(s)) for n in names for s in (0, 1, 2))
    compare = next(t for t in root.values() if t["taskInfo"]["name"] == "compare")
    assert compare["inputs"]["parameters"]["base_run_id"]["taskOutputParameter"]["producerTask"] == "plan"
    last = [n for n, t in root.items() if t is loops[-1][0]][0]
    assert last in compare["dependentTasks"]  # after the last loop, which runs after all the others
