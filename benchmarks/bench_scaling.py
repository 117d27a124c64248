"""How the tiny-model pipeline's wall time scales with rows, rounds and experts (configs/tiny.yaml).

The pipeline runs **in-process**: every step's ``main()`` is called in DAG order on local folders (no object
storage, no kfp.local), so the numbers are the steps' own work without orchestration or interpreter
start-up (bench_pipeline.py measures those). Axes (one varied, the other at the base point
easy_train=48, rounds=1):

* rows: ``data.easy_train`` in {48, 144, 432} (1 round) -> whole-pipeline wall time (at 24-72 rows the fixed
  costs, model loading and evaluation, hid the training cost: R^2 0.12-0.23);
* rounds: ``boosting.rounds`` in {1, 2, 3} (48 rows) -> whole-pipeline wall time;
* experts: in EnsemW2S an expert *is* a round, so the third axis is K, the number of experts the ensemble
  decodes with at pseudo-label time: the 3-round run's state cut to its first K in {1, 2, 3} experts (alphas
  forced positive so all K are used), timing the ``pseudo_label --source ensemble`` step alone (the only step
  whose cost depends on K alone; the rest of the pipeline is the same for every K).

``boosting.on_nonpositive_alpha=skip`` (the default) keeps every round's training in the run. A least-squares
line is fitted per axis; slope (s per unit) and R^2 are printed.
"""
from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C

ROWS = (24, 32) if C.QUICK else (48, 144, 432)  # large enough that training, not fixed costs, sets the slope
ROUNDS = (1, 2) if C.QUICK else (1, 2, 3)
KS = (1, 2) if C.QUICK else (1, 2, 3)
BASE_ROWS, BASE_ROUNDS = ROWS[0], 1  # rows vary at 1 round, rounds vary at the smallest row count
BUDGET_S = 360.0  # no new pipeline point starts after this (the whole script stays under ~6 min)


def run_pipeline(d: Path, rows: int, rounds: int) -> dict:
    """All steps in DAG order, in this process; returns wall and per-step seconds."""
    from ensemw2s.steps import (
        evaluate,
    keys,
        pseudo_label,
        report,
        split_data,
        train_expert,
        train_student,
        update_weights,
    )

    cfg = ["--config", str(C.ROOT / "configs" / "tiny.yaml"), "--set", f"data.easy_train={rows}",
           "--set", f"boosting.rounds={rounds}", "--set", "boosting.on_nonpositive_alpha=skip"]
    steps: dict[str, float] = {}

    def step(name, fn, args):
        t0 = time.perf_counter()
        rc = fn(cfg + args)
        steps[name] = time.perf_counter() - t0
        if rc != 0:
            raise RuntimeError(f"step {name} exited {rc}")

    t0 = time.perf_counter()
    step("split_data", split_data.main, ["--splits", str(d / "splits"), "--state", str(d / "state0")])
    single = ["--single-expert", str(d / "expert-single")]
    step("train_single", train_expert.main, ["--single", "--splits", str(d / "splits"), "--state", str(d / "state0"),
                                             "--expert", str(d / "expert-single")])
    for t in range(1, rounds + 1):
        step(f"train_expert-r{t}", train_expert.main, ["--round", str(t), "--splits", str(d / "splits"), "--state",
                                                       str(d / f"state{t - 1}"), "--expert", str(d / f"expert{t}")])
        step(f"update_weights-r{t}", update_weights.main, ["--round", str(t), "--state", str(d / f"state{t - 1}"),
                                                           "--expert", str(d / f"expert{t}"), "--out-state",
                                                           str(d / f"state{t}")])
    for source in ("ensemble", "single", "gold"):
        step(f"pseudo_label-{source}", pseudo_label.main, ["--source", source, "--splits", str(d / "splits"),
                                                           "--state", str(d / f"state{rounds}"), "--labels",
                                                           str(d / f"labels-{source}")]
             + (single if source == "single" else []))
        step(f"train_student-{source}", train_student.main, ["--source", source, "--labels",
                                                             str(d / f"labels-{source}"), "--student",
                                                             str(d / f"student-{source}")])
        step(f"evaluate-student-{source}", evaluate.main, ["--target", f"student-{source}", "--splits",
                                                           str(d / "splits"), "--student", str(d / f"student-{source}"),
                                                           "--out", str(d / f"eval-student-{source}")])
    step("evaluate-experts", evaluate.main, ["--target", "experts", "--splits", str(d / "splits"), "--state",
                                             str(d / f"state{rounds}"), "--out", str(d / "eval-experts")] + single)
    args = ["--out", str(d / "report")]
    for t in keys.EVAL_TARGETS:
        args += [f"--eval-{t}", str(d / f"eval-{t}")]
    step("report", report.main, args)
    wall = time.perf_counter() - t0
    state = json.loads((d / f"state{rounds}" / "state.json").read_text())
    used = sum(1 for e in state["experts"] if not e["skipped"] and e["alpha"] > 0)
    return {"rows": rows, "rounds": rounds, "wall": wall, "steps": steps, "experts_with_alpha_gt0": used}


def pseudo_label_k(d: Path, K: int) -> float:
    from ensemw2s.steps import pseudo_label

    src = d / f"state{max(ROUNDS)}"
    dst = d / f"state-k{K}"
    shutil.copytree(src, dst)
    state = json.loads((dst / "state.json").read_text())
    state["experts"] = [{**e, "skipped": False, "alpha": max(float(e["alpha"]), 0.5 + 0.1 * i)}
                        for i, e in enumerate(state["experts"][:K])]
    (dst / "state.json").write_text(json.dumps(state))
    t0 = time.perf_counter()
    rc = pseudo_label.main(["--config", str(C.ROOT / "configs" / "tiny.yaml"), "--source", "ensemble", "--splits",
                            str(d / "splits"), "--state", str(dst), "--labels", str(d / f"labels-k{K}")])
    if rc != 0:
        raise RuntimeError(f"pseudo_label K={K} exited {rc}")
    return time.perf_counter() - t0


def fit(xs, ys) -> tuple[float, float, float]:
    import numpy as np

    x, y = np.asarray(xs, float), np.asarray(ys, float)
    slope, icpt = np.polyfit(x, y, 1)
    pred = slope * x + icpt
    ss_res, ss_tot = float(((y - pred) ** 2).sum()), float(((y - y.mean()) ** 2).sum())
    return float(slope), float(icpt), (1 - ss_res / ss_tot) if ss_tot > 0 else float("nan")


def main() -> int:
    C.quiet_hf()
    import logging

    t_all = time.perf_counter()
    runs: dict[tuple[int, int], dict] = {}
    # interleaved so that a run cut short by the budget still has two points on each axis
    points = [(BASE_ROWS, ROUNDS[0]), (BASE_ROWS, ROUNDS[1]), (ROWS[1], BASE_ROUNDS), (BASE_ROWS, ROUNDS[-1]),
              (ROWS[-1], BASE_ROUNDS)]
    points = list(dict.fromkeys(points))
    t_start = time.perf_counter()
    k_times: dict[int, float] = {}
    with tempfile.TemporaryDirectory(prefix="ensemw2s-bench-scaling-") as tmp:
        # warm-up, not timed: first imports (torch, transformers, peft), model files into the page cache
        from ensemw2s.steps import split_data

        split_data.main(["--config", str(C.ROOT / "configs" / "tiny.yaml"), "--splits", f"{tmp}/w/splits",
                         "--state", f"{tmp}/w/state0"])
        t_all = time.perf_counter()
        for rows, rounds in points:
            if time.perf_counter() - t_all > BUDGET_S:
                print(f"  skip rows={rows} rounds={rounds}: over the {BUDGET_S:.0f} s budget", flush=True)
                continue
            d = Path(tmp) / f"n{rows}-t{rounds}"
            r = run_pipeline(d, rows, rounds)
            logging.getLogger().setLevel(logging.WARNING)  # the steps' own INFO lines, once is enough
            runs[(rows, rounds)] = r
            print(f"  rows={rows:3d} rounds={rounds}: {r['wall']:6.1f} s ({r['experts_with_alpha_gt0']} experts with "
                  f"alpha > 0)", flush=True)
            if rounds == max(ROUNDS) and rows == BASE_ROWS:
                for K in KS:
                    k_times[K] = pseudo_label_k(d, K)
                    print(f"  pseudo_label ensemble K={K}: {k_times[K]:.1f} s", flush=True)

    rows_out, fits = [], {}
    axes = [("rows (data.easy_train)", [(n, runs[(n, BASE_ROUNDS)]["wall"]) for n in ROWS if (n, BASE_ROUNDS) in runs]),
            ("rounds (boosting.rounds)", [(t, runs[(BASE_ROWS, t)]["wall"]) for t in ROUNDS if (BASE_ROWS, t) in runs]),
            ("experts K (pseudo_label step)", sorted(k_times.items()))]
    for name, pts in axes:
        if len(pts) >= 2:
            slope, icpt, r2 = fit([p[0] for p in pts], [p[1] for p in pts])
            fits[name] = {"points": pts, "slope": slope, "intercept": icpt, "r2": r2}
            rows_out.append([name, "  ".join(f"{x}:{y:.1f}s" for x, y in pts), slope, icpt, r2])
    print(C.table(["axis", "points (x: wall)", "slope s/unit", "intercept s", "R^2"], rows_out,
                  title="\nbench_scaling: tiny pipeline, steps called in-process (no kfp.local, no S3)"))
    base = runs.get((BASE_ROWS, BASE_ROUNDS))
    if base:
        top = sorted(base["steps"].items(), key=lambda kv: -kv[1])[:6]
        print(f"base point ({BASE_ROWS} rows, {BASE_ROUNDS} round), slowest steps: " + ", ".join(f"{k} {v:.1f}s" for k, v in top))
    total = time.perf_counter() - t_start
    print(f"load average at the end: {C.loadavg()} (1/5/15 min; {C.machine()['nproc']} CPUs)")
    print(f"\nbench_scaling finished in {total:.0f} s")
    payload = {"runs": {f"{k[0]}x{k[1]}": v for k, v in runs.items()}, "k_times": k_times, "fits": fits,
               "seconds": total}
    print(f"results: {C.save('bench_scaling', payload)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
