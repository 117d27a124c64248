"""report: merge the evaluations into ``metrics.json``, a Markdown/HTML results table and a plot by round.

Inputs: the ``eval/`` folders of evaluate (experts and the three students). Output ``report/``:
``metrics.json`` (flat, one key per number), ``predictions.jsonl`` (all models), ``report.md``,
``report.html`` (the run's page of :mod:`ensemw2s.site`, plots embedded, for the KFP UI) and
``accuracy_by_round.png``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from ensemw2s.config import EvalConfig, StorageConfig, config_hash
from ensemw2s.steps import keys
from ensemw2s.steps.stepio import StepIO, base_parser, read_json, step_main, write_json

STEP = keys.REPORT

# the plot of every model's accuracy by round, next to report.md (report.md links it; make run names it)
BY_ROUND_PLOT = "accuracy_by_round.png"


def build_parser():
    p = base_parser(STEP, __doc__.splitlines()[0])
    for t in keys.EVAL_TARGETS:
        p.add_argument(f"--eval-{t}", dest=f"eval_{t.replace('-', '_')}", required=t == "experts",
                       help=f"eval folder of evaluate --target {t}" + ("" if t == "experts" else
                                                                        " (not with student.enabled: false)"))
    p.add_argument("--out", required=True, help="output folder")
    return p


def run(ev: EvalConfig, *, eval_dirs: dict[str, Path], out_dir: Path, seed: int, rounds: int,
        run_id: Optional[str] = None, storage: Optional[StorageConfig] = None, resume: bool = True,
        extra: Optional[dict] = None, students: bool = True) -> dict:
    """``students=False`` (``student.enabled: false``): the experts' evaluation only."""
    from ensemw2s.data import read_jsonl, write_jsonl
    from ensemw2s.diagnostics import DIAG_PLOTS
    from ensemw2s.evaluation import build_metrics, render_report
    from ensemw2s.plots import plot_by_round, plot_disagreement, plot_expert_accuracy
    from ensemw2s.site import run_page

    out_dir = Path(out_dir)
    io = StepIO(STEP, run_id=run_id, storage=storage, resume=resume,
                config_hash=config_hash({"eval": ev, "seed": seed, "rounds": rounds}),
                inputs=tuple((keys.evaluate(t), "eval") for t in keys.eval_targets(students)))
    if io.restore({"report": out_dir}):
        return read_json(out_dir / "metrics.json")
    preds, infos = [], {}
    for target in keys.eval_targets(students):
        d = io.fetch(eval_dirs.get(target), keys.evaluate(target), "eval")
        preds += read_jsonl(d / "predictions.jsonl", validate=False)
        infos[target] = read_json(d / "eval.json")
    exp = infos["experts"]
    metrics_extra = {"seed": seed, "rounds": rounds, "primary": ev.primary, "run_id": run_id, "students": students,
                     "alphas": exp["alphas"], "eps": exp["eps"], "eps_prior": exp["eps_prior"],
                     "weights_ess": exp.get("weights_ess"), "drawn_fraction": exp.get("drawn_fraction"),
                     "active_rounds": exp["active_rounds"], "chosen_rounds": exp.get("chosen_rounds"),
                     "val_acc_by_round": exp.get("val_acc_by_round"),
                     "single_definition": (exp.get("single") or {}).get("definition"),  # ensemble.single
                     "eval_seconds": {t: i["seconds"] for t, i in infos.items()}, **(extra or {})}
    from ensemw2s.assets import model_display_name

    metrics_extra["weak_model"] = model_display_name(exp["weak_model"]) if "weak_model" in exp else None
    for t, i in infos.items():
        if "student" in i:
            metrics_extra["strong_model"] = model_display_name(i["student"]["base_model"])
            metrics_extra[f"{t.replace('-', '_')}_labels_accuracy_vs_gold"] = i["student"]["labels_accuracy_vs_gold"]
    metrics = build_metrics(preds, primary=ev.primary, extra=metrics_extra)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / "metrics.json", metrics)
    write_jsonl(out_dir / "predictions.jsonl", preds)
    plot_by_round([metrics], out_dir / BY_ROUND_PLOT)
    for (name, _), plot in zip(DIAG_PLOTS, (plot_disagreement, plot_expert_accuracy)):  # report.md links them
        plot(metrics, out_dir / name)
    md = render_report(metrics, BY_ROUND_PLOT)
    (out_dir / "report.md").write_text(md)
    # the page of `ensemw2s runs page`, plots embedded: what the KFP UI shows for the HTML artifact
    (out_dir / "report.html").write_text(run_page(page_record(metrics, io.store, run_id)), encoding="utf-8")
    io.publish({"report": out_dir})
    print(md, flush=True)
    return metrics


def page_record(metrics: dict, store=None, run_id: Optional[str] = None) -> dict:
    """What :func:`ensemw2s.site.run_page` shows of this run at report time: the metrics and, with object
    storage, the steps recorded so far (the seconds of the execution that computed each)."""
    from ensemw2s.provenance import produced_seconds, step_timings

    steps = []
    if store is not None and run_id:
        for key, t in step_timings(store, run_id).items():
            restored = bool(t.get("restored"))
            steps.append({"key": key, "status": "restored" if restored else "done", "restored": restored,
                          "seconds": produced_seconds(t), "outputs": {}, "log_uri": None})
    return {"run_id": run_id or metrics.get("run_id"), "metrics": metrics, "steps": steps,
            "status": "complete (written by the report step)"}


def main(argv=None) -> int:
    def work(a, cfg, **io):
        students = keys.students_enabled(cfg)
        targets = keys.eval_targets(students)
        missing = [f"--eval-{t}" for t in targets if getattr(a, f"eval_{t.replace('-', '_')}") is None]
        if missing:
            from ensemw2s.errors import ConfigError

            raise ConfigError(f"report: {', '.join(missing)} required (student.enabled is true)")
        return run(cfg.eval, eval_dirs={t: Path(getattr(a, f"eval_{t.replace('-', '_')}")) for t in targets},
                   out_dir=Path(a.out), seed=cfg.seed, rounds=cfg.boosting.rounds, students=students, **io)

    return step_main(build_parser(), argv, work)


if __name__ == "__main__":
    raise SystemExit(main())
