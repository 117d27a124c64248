"""``python -m benchmarks.science settings|science``: the results tooling (run from the repository root)."""
from __future__ import annotations

import argparse
from pathlib import Path

from . import DEFAULT_CONFIG, REPO, RESULTS_DIR
from .prestudy import SETTINGS


def _rel(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _add_config(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default=None, help=f"YAML config (default: {_rel(DEFAULT_CONFIG)})")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set boosting.rounds=3 (repeatable)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.science",
                                description="science benchmarks: the settings pre-study, seeded runs -> "
                                            "docs/results.md (run from the repository root)")
    sub = p.add_subparsers(dest="command", required=True)
    b = sub.add_parser("settings", help="weak expert vs gold ceiling per easy->hard setting (pre-study)",
                       description="The pre-study: the round-1 weak expert and the gold-trained strong ceiling on "
                                   "each easy->hard setting's OOD test; results in docs/results/prestudy.json.")
    _add_config(b)
    b.add_argument("--settings", default=None, help="comma list (default: all): " + ", ".join(SETTINGS))
    b.add_argument("--variant", default="base", help="label of this sizing (e.g. 'student-lr1e-4'); entries "
                   "are kept per setting and variant")
    b.add_argument("--redo", action="store_true", help="recompute entries already in the results file")
    b.add_argument("--out", default=None, help=f"results file (default: {_rel(RESULTS_DIR / 'prestudy.json')})")
    b.set_defaults(fn=cmd_settings)

    b = sub.add_parser("science", help="seeds through the real pipeline, then docs/results.md",
                       description="Each seed (and each ablation) is a real local pipeline run (ensemw2s run); "
                                   "their stored predictions are pooled into docs/results.md.")
    _add_config(b)
    b.add_argument("--seeds", type=int, default=3, help="number of seeds (0..n-1)")
    b.add_argument("--jobs", type=int, default=1, help="runs at a time (each gets cores/jobs threads)")
    b.add_argument("--tag", default=None, help="run-id tag (default: the config file's stem)")
    b.add_argument("--ablations", default=None, help="ablation config (the grid format of ensemw2s.ablation, "
                   "with base: the --config file), e.g. configs/science_ablations.yaml")
    b.add_argument("--no-run", action="store_true", help="only rebuild the page from runs already in storage "
                   "(or, for runs no longer there, from the records in <out folder>/results/science.json)")
    b.add_argument("--out", default=None, help=f"the page (default: {_rel(REPO / 'docs' / 'results.md')}); the "
                   "plot and science.json go to results/ beside it")
    b.add_argument("--prestudy", default=None, help="pre-study results shown on the page (default: "
                   f"{_rel(RESULTS_DIR / 'prestudy.json')})")
    b.add_argument("--notes", default=None, help="hand-written prose included as it is (default: "
                   f"{_rel(RESULTS_DIR / 'notes.md')})")
    b.add_argument("--reference", default=None, help="the science.json of another setting shown for reference "
                   "(e.g. docs/results/science_gemma270m.json; its page results_<name>.md beside docs/results.md)")
    b.add_argument("--log-dir", default=None, help=f"one log per run (default: {_rel(REPO / 'build' / 'science')})")
    b.set_defaults(fn=cmd_science)

    from .study import ARMS, DEFAULT_RECORDS, DEFAULT_STUDY_CONFIG

    b = sub.add_parser("study", help="the boosting study: EnsemW2S vs bagging vs one expert, experts alone "
                                     "-> docs/results/study.json (the v3 section of docs/results.md)",
                       description="Each (seed, arm) is a real local pipeline run without the student stage; "
                                   "their stored predictions give the page's pooled paired intervals, the gate "
                                   "and the disagreement / oracle tables. Resumable: run it again to continue.")
    b.add_argument("--config", default=None, help=f"YAML config (default: {_rel(DEFAULT_STUDY_CONFIG)})")
    b.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value (repeatable)")
    b.add_argument("--seeds", type=int, default=3, help="number of seeds (0..n-1)")
    b.add_argument("--arms", default=",".join(ARMS), help="comma list of arms: " + ", ".join(ARMS))
    b.add_argument("--no-run", action="store_true", help="only rebuild the page from runs already in storage "
                   f"(and the records in {_rel(DEFAULT_RECORDS)})")
    b.add_argument("--records", default=None, help=f"the runs' records (default: {_rel(DEFAULT_RECORDS)})")
    b.add_argument("--log-dir", default=None, help=f"one log per run (default: {_rel(REPO / 'build' / 'study')})")
    b.set_defaults(fn=cmd_study)
    return p


def _config(args) -> str:
    return args.config or _rel(DEFAULT_CONFIG)


def cmd_settings(args) -> int:
    from ensemw2s.config import load_config

    from .prestudy import check_settings, prestudy

    settings = [x.strip() for x in (args.settings or ",".join(SETTINGS)).split(",") if x.strip()]
    check_settings(settings)
    config = _config(args)
    load_config(config, args.overrides)  # a bad key fails before anything runs
    book = prestudy(config, settings, overrides=args.overrides, variant=args.variant, redo=args.redo,
                    out=Path(args.out) if args.out else RESULTS_DIR / "prestudy.json")
    ok = [k for k, e in book["entries"].items() if e["qualifies"]]
    print("qualifying settings: " + (", ".join(ok) if ok else "none"))
    return 0


def cmd_science(args) -> int:
    from .page import science

    config = _config(args)
    return science(config, args.overrides, seeds=args.seeds, jobs=args.jobs, tag=args.tag or Path(config).stem,
                   ablations=args.ablations, run=not args.no_run,
                   out=Path(args.out) if args.out else REPO / "docs" / "results.md",
                   log_dir=Path(args.log_dir) if args.log_dir else None,
                   prestudy=Path(args.prestudy) if args.prestudy else RESULTS_DIR / "prestudy.json",
                   notes=Path(args.notes) if args.notes else RESULTS_DIR / "notes.md",
                   reference=Path(args.reference) if args.reference else None)


def cmd_study(args) -> int:
    from .study import DEFAULT_RECORDS, DEFAULT_STUDY_CONFIG, study

    return study(args.config or _rel(DEFAULT_STUDY_CONFIG), args.overrides, seeds=args.seeds,
                 arms=tuple(a.strip() for a in args.arms.split(",") if a.strip()), run=not args.no_run,
                 records=Path(args.records) if args.records else DEFAULT_RECORDS,
                 log_dir=Path(args.log_dir) if args.log_dir else None)


def main(argv=None) -> int:
    from ensemw2s.errors import call_reporting_user_errors

    args = build_parser().parse_args(argv)
    return call_reporting_user_errors(lambda: args.fn(args))


if __name__ == "__main__":
    raise SystemExit(main())
