"""Stored runs, read back from object storage: ``ensemw2s runs list | show | compare | page | log``.

Everything here is read from what the runs recorded under ``runs/<run_id>/`` (the stored config, the run summary
and status in ``run-summary/``, each step's ``timing.json``, ``step.log`` and artifacts, the report's
``metrics.json`` and ``predictions.jsonl``), so it works the same on runs of ``ensemw2s run``, of the results
page (``python -m benchmarks.science``: ``sci-*`` runs) and of the nightly ablations (a base run id with
``run-summary/plan.json`` and ``compare/``, whose (point, seed) children are runs of their own).

- :func:`overview`: one run in a line (``runs list``); :func:`details`: one run in full (``runs show``, the page);
- :func:`compare`: runs side by side, with paired differences computed on the stored per-question predictions
  (:func:`ensemw2s.stats.paired_test`: bootstrap interval and McNemar p on the questions both runs answered);
- :func:`write_site`: the static HTML site of :mod:`ensemw2s.site` (``runs page``), uploaded next to each
  run's report (``runs/<run_id>/report/page.html``);
- :func:`log_text`: a step's full log (the local copy of the run's machine, else ``step.log`` in storage).

Core module (no kfp).
"""
from __future__ import annotations

import datetime as dt
import json
import re
import tempfile
from pathlib import Path
from typing import Iterable, Optional

from ensemw2s.errors import ConfigError, MissingObjectError, StorageError
from ensemw2s.evaluation import MODEL_LABELS, MODELS, SPLIT_KEYS, guarded, render_report
from ensemw2s.provenance import produced_record, produced_seconds
from ensemw2s.stats import paired_test
from ensemw2s.steps import keys

STEP_LOG = "step.log"
PAGE = "page.html"
HEADLINE = (("weak_single_acc_ood", "weak OOD"), ("ensemble_acc_ood", "ens OOD"),
            ("student_ensemble_acc_ood", "stu<-ens OOD"), ("student_single_acc_ood", "stu<-single OOD"),
            ("ceiling_acc_ood", "ceiling OOD"), ("pgr_ens", "PGR ens"))
COMPARE_KEYS = ("weak_single_acc_id", "ensemble_acc_id", "student_ensemble_acc_id", "ceiling_acc_id",
                "weak_single_acc_ood", "ensemble_acc_ood", "ensemble_uniform_acc_ood", "student_single_acc_ood",
                "student_ensemble_acc_ood", "ceiling_acc_ood", "pgr_single", "pgr_ens",
                "student_ensemble_labels_accuracy_vs_gold", "student_single_labels_accuracy_vs_gold",
                "mean_disagreement_id", "mean_disagreement_ood", "oracle_acc_ood", "n_id", "n_ood")
_STAMP_RE = re.compile(r"(20\d{6})-(\d{6})")


# --------------------------------------------------------------------------- reading one run


def _json(store, run_id: str, step: str, name: str) -> Optional[dict]:
    try:
        data = store.get_json(run_id, step, name)
    except (MissingObjectError, StorageError):
        return None
    return data if isinstance(data, dict) else None


def metrics_of(store, run_id: str) -> Optional[dict]:
    """A run's ``metrics.json`` (that file only), None without a complete report."""
    from ensemw2s.steps.compare import fetch_metrics

    return fetch_metrics(store, run_id)


def report_of(store, run_id: str, dest: Path) -> Optional[Path]:
    """The run's whole report artifact, verified, in ``dest`` (None without a complete report)."""
    if not store.is_complete(run_id, keys.REPORT, "report"):
        return None
    store.get_dir(run_id, keys.REPORT, "report", dest)
    return dest


def config_summary(cfg: Optional[dict]) -> str:
    """A config in one short line (models, data, rounds, alpha rule / sampling, seed)."""
    if not cfg:
        return "?"
    g = lambda sec, k, d="?": (cfg.get(sec) or {}).get(k, d)  # noqa: E731
    return (f"{g('experts', 'model')} -> {g('student', 'model')}, {g('data', 'easy')} -> {g('data', 'hard')}, "
            f"T={g('boosting', 'rounds')} {g('boosting', 'alpha_rule')}/{g('boosting', 'sampling')}, "
            f"seed {cfg.get('seed', '?')}")


def _stored_at(store, run_id: str) -> str:
    """When the run's records were first written (the oldest object under ``run-summary/``), "?" if none."""
    try:
        times = [o["LastModified"] for o in store._list(store.key(run_id, keys.RUN_SUMMARY) + "/")
                 if "LastModified" in o]
    except StorageError:
        return "?"
    return min(times).astimezone(dt.timezone.utc).strftime("%Y-%m-%d %H:%M") if times else "?"


def _created(run_id: str, summary: Optional[dict], status: Optional[dict]) -> str:
    starts = [t.get("start") for t in ((summary or {}).get("timings") or {}).values() if t.get("start")]
    if starts:
        return dt.datetime.fromtimestamp(min(starts), dt.timezone.utc).strftime("%Y-%m-%d %H:%M")
    m = _STAMP_RE.search(run_id)
    if m:
        d, t = m.groups()
        return f"{d[:4]}-{d[4:6]}-{d[6:]} {t[:2]}:{t[2:4]}"
    if status and status.get("updated"):
        return status["updated"].replace("T", " ")[:16]
    return "?"  # overview() then asks the object store


def overview(store, run_id: str) -> dict:
    """One run in a line: id, kind (run | ablation), date, config summary, status, headline metrics."""
    steps = store.list_steps(run_id)
    cfg = _json(store, run_id, keys.RUN_SUMMARY, "config.json") if keys.RUN_SUMMARY in steps else None
    summary = _json(store, run_id, keys.RUN_SUMMARY, "summary.json") if keys.RUN_SUMMARY in steps else None
    status = _json(store, run_id, keys.RUN_SUMMARY, "status.json") if keys.RUN_SUMMARY in steps else None
    plan = _json(store, run_id, keys.RUN_SUMMARY, "plan.json") if keys.RUN_SUMMARY in steps else None
    rec = {"run_id": run_id, "kind": "ablation" if plan else "run", "config": cfg, "summary": summary,
           "status_record": status, "plan": plan, "metrics": None, "stored_steps": steps,
           "created": _created(run_id, summary, status)}
    if rec["created"] == "?" and keys.RUN_SUMMARY in steps:  # e.g. a cluster run: no local summary
        rec["created"] = _stored_at(store, run_id)
    if plan:
        children = [r["run_id"] for r in plan.get("runs", [])]
        rec["children"] = children
        rec["created"] = (plan.get("created") or rec["created"]).replace("T", " ")[:16]
        have = set(store.list_runs())
        done = sum(1 for c in children if c in have and store.is_complete(c, keys.REPORT, "report"))
        compare = "compare" in steps and store.is_complete(run_id, "compare", "compare")
        rec["status"] = f"ablation: {done}/{len(children)} runs complete" + ("; compared" if compare else "")
        rec["config_summary"] = (f"grid {', '.join(plan.get('grid', {}))}; {len(plan.get('points', []))} points "
                                 f"x seeds {plan.get('seeds')}")
        return rec
    rec["metrics"] = metrics_of(store, run_id) if keys.REPORT in steps else None
    rec["config_summary"] = config_summary(cfg)
    rec["status"] = _status(store, rec, steps, cfg)
    return rec


def _status(store, rec: dict, steps: list[str], cfg: Optional[dict]) -> str:
    if rec["metrics"] is not None:
        return "complete"
    rounds = ((cfg or {}).get("boosting") or {}).get("rounds")
    expected = list(keys.run_steps(rounds, keys.students_enabled(cfg or {}))) if rounds else []
    # a step is done once its timing record is written (after its outputs are complete)
    done = len([s for s in steps if s != keys.RUN_SUMMARY and (not expected or s in expected)
                and store.exists(rec["run_id"], s, "timing.json")])
    of = f"{done}/{len(expected)} steps done" if expected else f"{done} steps done"
    st = rec.get("status_record") or {}
    if st.get("status") == "failed":
        return f"failed at {st.get('step') or '?'} ({of})"
    if st.get("status") == "interrupted":  # Ctrl-C; `ensemw2s run --run-id <id>` resumes it
        return f"interrupted ({of})"
    if st.get("status") == "running":
        return f"running or stopped ({of})"
    if not [s for s in steps if s != keys.RUN_SUMMARY]:
        return "planned (no step yet)"
    return f"incomplete ({of})"


def details(store, run_id: str, *, report_dir: Optional[Path] = None) -> dict:
    """One run in full: :func:`overview` plus every step (status, the seconds of the execution that computed
    it, restored or not, its artifacts' URIs, its log's URI), the report's URI and, with ``report_dir``, the
    whole report artifact downloaded there (``predictions`` then holds the per-question predictions)."""
    from ensemw2s.storage import validate_name

    validate_name("run id", run_id)
    if not store.list_steps(run_id):
        raise MissingObjectError(f"no run {run_id!r} in s3://{store.bucket}/{store.prefix}/ ({store.endpoint}); "
                                 "`ensemw2s runs list` shows the stored runs")
    rec = overview(store, run_id)
    cfg = rec["config"] or {}
    rounds = (cfg.get("boosting") or {}).get("rounds") or (rec["metrics"] or {}).get("rounds")
    expected = list(keys.run_steps(rounds, keys.students_enabled(cfg))) if rounds else []
    stored = [s for s in rec["stored_steps"] if s != keys.RUN_SUMMARY]
    order = expected + [s for s in stored if s not in expected]
    steps = []
    for key in order:
        step = {"key": key, "status": "not run", "seconds": None, "restored": False, "outputs": {},
                "log_uri": None, "commit": None}
        if key in stored:
            timing = _json(store, run_id, key, "timing.json")
            outputs = store.list_outputs(run_id, key)
            complete = {o: store.is_complete(run_id, key, o) for o in outputs}
            step["outputs"] = {o: store.uri(run_id, key, o) + "/" for o in outputs}
            if timing:
                step["seconds"] = produced_seconds(timing)
                step["restored"] = bool(timing.get("restored"))
                step["start"] = timing.get("start")
                step["commit"] = (produced_record(timing) or {}).get("commit") or timing.get("commit")
            if outputs and all(complete.values()):
                step["status"] = "restored" if step["restored"] else "done"
            else:
                step["status"] = "incomplete"
            if store.exists(run_id, key, STEP_LOG):
                step["log_uri"] = store.uri(run_id, key, STEP_LOG)
        steps.append(step)
    rec["steps"] = steps
    rec["report_uri"] = store.uri(run_id, keys.REPORT, "report") + "/" if rec["metrics"] is not None else None
    rec["page_uri"] = store.uri(run_id, keys.REPORT, PAGE) if store.exists(run_id, keys.REPORT, PAGE) else None
    rec["predictions"] = None
    if report_dir is not None and rec["metrics"] is not None and report_of(store, run_id, Path(report_dir)):
        from ensemw2s.data import read_jsonl

        rec["metrics"] = json.loads((Path(report_dir) / "metrics.json").read_text())
        rec["predictions"] = read_jsonl(Path(report_dir) / "predictions.jsonl", validate=False)
    return rec


def expand(store, run_ids: Iterable[str]) -> list[str]:
    """Run ids, with an ablation's base id replaced by its (point, seed) runs that have a report."""
    have = set(store.list_runs())
    out: list[str] = []
    for rid in run_ids:
        if rid not in have:
            raise MissingObjectError(f"no run {rid!r} in s3://{store.bucket}/{store.prefix}/ ({store.endpoint}); "
                                     "`ensemw2s runs list` shows the stored runs")
        plan = _json(store, rid, keys.RUN_SUMMARY, "plan.json")
        if plan:  # the (point, seed) runs that have a report (a planned or failed one has nothing to compare)
            out += [r["run_id"] for r in plan.get("runs", [])
                    if r["run_id"] in have and store.is_complete(r["run_id"], keys.REPORT, "report")]
        else:
            out.append(rid)
    return list(dict.fromkeys(out))


def list_runs(store) -> list[dict]:
    """:func:`overview` of every run in storage, newest first (read 8 at a time: a few requests each)."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=8) as pool:
        recs = list(pool.map(lambda rid: overview(store, rid), store.list_runs()))
    return sorted(recs, key=lambda r: (r["created"], r["run_id"]), reverse=True)


# --------------------------------------------------------------------------- comparing runs


def correct_by_id(preds: list[dict], model: str, split: str, method: str) -> dict:
    return {p["id"]: bool(p["correct"]) for p in preds
            if p["model"] == model and p["split"] == split and p["method"] == method}


def paired_against(ref: dict, other: dict, *, method: str = "loglik") -> list[dict]:
    """Paired differences ``other − ref`` per model and test split, on the questions both runs answered
    (:func:`ensemw2s.stats.paired_test`). ``ref`` / ``other``: :func:`details` records with predictions."""
    out = []
    for model in MODELS:
        for split, tag in SPLIT_KEYS.items():
            a = correct_by_id(other["predictions"] or [], model, split, method)
            b = correct_by_id(ref["predictions"] or [], model, split, method)
            if not a or not b:
                continue
            ids = sorted(set(a) & set(b))
            row = {"model": model, "split": tag, "run": other["run_id"], "ref": ref["run_id"], "n": len(ids),
                   "n_ref": len(b), "n_run": len(a)}
            if ids:
                row.update(paired_test([a[i] for i in ids], [b[i] for i in ids]))
            out.append(row)
    return out


def compare(store, run_ids: list[str], *, work: Optional[Path] = None) -> dict:
    """Runs side by side: their :func:`details` (with predictions), the metrics of :data:`COMPARE_KEYS`, and the
    paired differences of every run against the first (:func:`paired_against`)."""
    ids = expand(store, run_ids)
    if not ids:
        raise MissingObjectError("nothing to compare: no run with a report among " + ", ".join(run_ids))
    with tempfile.TemporaryDirectory(prefix="ensemw2s-runs-") as tmp:
        base = Path(work or tmp)
        recs = [details(store, rid, report_dir=base / rid / "report") for rid in ids]
    with_report = [r for r in recs if r["metrics"] is not None]
    ref = with_report[0] if with_report else None
    method = (ref["metrics"].get("primary") if ref else None) or "loglik"
    paired = [row for r in with_report[1:] for row in paired_against(ref, r, method=method)]
    return {"runs": recs, "ref": ref["run_id"] if ref else None, "method": method, "paired": paired,
            "metrics": {k: [guarded(r["metrics"] or {}, k) for r in recs] for k in COMPARE_KEYS}}


def seed_groups(recs: list[dict]) -> list[dict]:
    """Runs with the same config except the seed (a run's seeds): ``{config, runs}`` for groups of 2 or more."""
    from ensemw2s.config import config_hash

    groups: dict = {}
    for r in recs:
        cfg = r.get("config")
        if not cfg or r.get("metrics") is None:
            continue
        key = config_hash({k: v for k, v in cfg.items() if k not in ("seed", "storage", "resources")})
        groups.setdefault(key, []).append(r)
    return [{"config": g[0]["config_summary"].rsplit(", seed", 1)[0], "runs": g} for g in groups.values()
            if len(g) > 1]


# --------------------------------------------------------------------------- text for the terminal


def _f(v, signed: bool = False) -> str:
    if v is None:
        return "—"
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return str(v)
    if isinstance(v, int):
        return str(v)
    return f"{v:+.3f}" if signed else f"{v:.3f}"


def table(head: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows)]
    line = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    return "\n".join([line(head), line(["-" * w for w in widths])] + [line(r) for r in rows])


def format_list(recs: list[dict]) -> str:
    if not recs:
        return "no runs stored yet (`ensemw2s run` makes one)"
    head = ["run id", "date", "status", *[h for _, h in HEADLINE], "config"]
    rows = [[r["run_id"], r["created"], r["status"], *[_f(guarded(r["metrics"], k)) if r["metrics"] else ""
                                                      for k, _ in HEADLINE], r["config_summary"]]
            for r in recs]
    return table(head, rows)


def format_show(rec: dict) -> str:
    out = [f"run {rec['run_id']} ({rec['kind']}), {rec['created']}: {rec['status']}",
           f"config: {rec['config_summary']}"]
    s = rec.get("summary") or {}
    if s:
        out.append(f"wall {s.get('wall_seconds')} s, commit {s.get('commit') or '?'}, machine "
                   f"{(s.get('machine') or {}).get('cpu_count', '?')} CPU cores, GPU "
                   f"{(s.get('machine') or {}).get('gpu') or 'none'}")
    if rec["kind"] == "ablation":
        out += ["", "runs of the grid (ensemw2s runs show <run id>):"] + [f"  {c}" for c in rec["children"]]
        return "\n".join(out)
    if rec["metrics"] is not None:
        out += ["", _without_diagnostics(render_report(rec["metrics"])).rstrip(), ""]
        out += format_diagnostics(rec["metrics"])
    rows = [[st["key"], st["status"], "" if st["seconds"] is None else f"{st['seconds']:.1f}",
             st["log_uri"] or "", " ".join(st["outputs"].values())] for st in rec["steps"]]
    out += ["", "steps (seconds: the execution that computed the step; restored = copied from storage):",
            table(["step", "status", "seconds", "log", "artifacts"], rows)]
    if rec.get("report_uri"):
        out.append(f"\nreport: {rec['report_uri']}  page: {rec.get('page_uri') or '(ensemw2s runs page ' + rec['run_id'] + ' -o DIR)'}")
    out.append(f"a step's full log: ensemw2s runs log {rec['run_id']} <step>")
    return "\n".join(out)


def _without_diagnostics(md: str) -> str:
    """report.md's text less its Markdown "Expert diagnostics" section (``runs show`` prints them as aligned
    columns, :func:`format_diagnostics`)."""
    from ensemw2s.diagnostics import DIAG_HEADING

    start = md.find(DIAG_HEADING)
    if start < 0:
        return md
    end = md.find("\n## ", start + len(DIAG_HEADING))
    return md[:start] + (md[end + 1:] if end >= 0 else "")


def format_diagnostics(m: dict) -> list[str]:
    """The expert diagnostics of a run for the terminal (:mod:`ensemw2s.diagnostics`): the per-round table, the
    oracle beside the ensemble and the best expert alone, the pairwise disagreement (ID and OOD side by side);
    one line for a run that did not record them."""
    from ensemw2s.diagnostics import (
        NOT_RECORDED,
        ROUND_COLUMNS,
        best_expert,
        disagreement_matrix,
        has_diagnostics,
        round_rows,
    )
    from ensemw2s.evaluation import acc_with_interval

    if not has_diagnostics(m):
        return ["expert diagnostics: " + NOT_RECORDED[0].lower() + NOT_RECORDED[1:]]
    out = ["expert diagnostics (each boosting expert alone; an average can only change answers on which they "
           "disagree):", table(list(ROUND_COLUMNS), [[str(r[0]), *[_f(x) for x in r[1:]]] for r in round_rows(m)])]
    for tag in ("id", "ood"):
        n = m.get(f"n_{tag}")
        t, best = best_expert(m, tag)
        out.append(f"{tag.upper():>3}: oracle (any expert right) {acc_with_interval(m.get(f'oracle_acc_{tag}'), n)}; "
                   f"ensemble {acc_with_interval(m.get(f'ensemble_acc_{tag}'), n)}; best expert alone "
                   + ("—" if t is None else f"{acc_with_interval(best, n)} (r{t})")
                   + f"; mean pairwise disagreement {_f(m.get(f'mean_disagreement_{tag}'))}")
    rounds = m["diag_rounds"]
    if len(rounds) > 1:
        mats = {tag: disagreement_matrix(m, tag) for tag in ("id", "ood")}
        rows = [[f"r{a}", *["·" if i == j else _f(v) for tag in ("id", "ood") for j, v in enumerate(mats[tag][i])]]
                for i, a in enumerate(rounds)]
        out += ["pairwise disagreement (share of questions on which two experts choose different options):",
                table(["", *[f"{tag.upper()} r{t}" for tag in ("id", "ood") for t in rounds]], rows)]
    return out


def format_compare(cmp: dict) -> str:
    recs = cmp["runs"]
    ids = [r["run_id"] for r in recs]
    out = ["runs: " + ", ".join(f"{r['run_id']} ({r['status']}; {r['config_summary']})" for r in recs), ""]
    rows = [[k, *[_f(v) for v in vals]] for k, vals in cmp["metrics"].items() if any(v is not None for v in vals)]
    out.append(table(["metric", *ids], rows))
    if cmp["paired"]:
        out += ["", f"paired differences against {cmp['ref']} (run − {cmp['ref']}, method {cmp['method']}, on the "
                "questions both answered; 95 % bootstrap interval, exact McNemar p):"]
        rows = []
        for p in cmp["paired"]:
            if "diff" in p:
                rows.append([p["run"], MODEL_LABELS[p["model"]], p["split"].upper(), str(p["n"]), _f(p["diff"], True),
                             f"[{_f(p['ci_low'], True)}, {_f(p['ci_high'], True)}]", f"{p['mcnemar_p']:.3f}"])
            else:
                rows.append([p["run"], MODEL_LABELS[p["model"]], p["split"].upper(), "0", "—",
                             "no common questions", "—"])
        out.append(table(["run", "model", "split", "n", "diff", "95% CI", "McNemar p"], rows))
    elif len(recs) > 1:
        out += ["", "no paired differences: fewer than two of these runs have a report"]
    return "\n".join(out)


# --------------------------------------------------------------------------- the site, logs


def site_dir(out_dir) -> Path:
    """``runs page -o``: the output folder, checked before the store is opened (the cli calls this first): an
    existing file, or a file where one of its parent folders should be, is refused (exit 2)."""
    out_dir = Path(out_dir)
    for p in (out_dir, *out_dir.parents):
        if p.exists():
            if not p.is_dir():
                what = "exists and is not a folder" if p == out_dir else f"{p} is a file, not a folder"
                raise ConfigError(f"-o {out_dir}: {what}; name a folder for index.html and the run pages")
            break
    return out_dir


def write_site(store, run_ids: list[str], out_dir: Path, *, upload: bool = True, log=print) -> dict:
    """``runs page``: the static site of :mod:`ensemw2s.site` in ``out_dir`` (``index.html`` and one page per
    run), each run's page also uploaded to ``runs/<run_id>/report/page.html`` (``upload``)."""
    from ensemw2s import site

    out_dir = site_dir(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ids = expand(store, run_ids) if run_ids else [r["run_id"] for r in list_runs(store)
                                                  if r["kind"] == "run" and r["metrics"] is not None]
    if not ids:
        raise MissingObjectError("no run with a report in storage: nothing to put on a page")
    cmp = compare(store, ids)
    uploaded = {}
    for rec in cmp["runs"]:
        path = out_dir / site.run_file(rec["run_id"])
        if upload and rec["metrics"] is not None:  # the stored copy stands alone: no link to this site's index
            path.write_text(site.run_page(rec), encoding="utf-8")
            uploaded[rec["run_id"]] = store.put_file(path, rec["run_id"], keys.REPORT, PAGE)
        path.write_text(site.run_page(rec, back="index.html"), encoding="utf-8")
        log(f"wrote {path}" + (f" (uploaded to {uploaded[rec['run_id']]})" if rec["run_id"] in uploaded else ""))
    index = out_dir / "index.html"
    index.write_text(site.index_page(cmp, seed_groups(cmp["runs"])), encoding="utf-8")
    log(f"wrote {index} ({len(cmp['runs'])} runs)")
    return {"index": index, "runs": [r["run_id"] for r in cmp["runs"]], "uploaded": uploaded}


def local_log(run_id: str, step: str) -> Path:
    """Where ``ensemw2s run`` keeps a step's log on the machine that ran it."""
    from ensemw2s import assets

    return assets.home() / "kfp-local" / run_id / "logs" / f"{step}.log"


def open_store(storage_cfg):
    """The object store of a config's ``storage`` section (the embedded server started when none is set)."""
    from ensemw2s import storage

    storage.storage_env(storage_cfg)
    store = storage.Store.from_config(storage_cfg)
    store.check(create=False)  # a read never creates the bucket (a typo'd name must fail, not appear)
    return store


def log_text(storage_cfg, run_id: str, step: str, *, tail: Optional[int] = None) -> tuple[str, str]:
    """``(where, text)`` of a step's full log: the local copy if this machine ran it, else ``step.log`` in
    the object store of ``storage_cfg`` (a ``storage`` config section); ``tail``: only its last lines."""
    if tail is not None and (isinstance(tail, bool) or not isinstance(tail, int) or tail < 1):
        raise ConfigError(f"--tail: {tail!r} is out of range; it must be an integer >= 1 (the last N lines), "
                          "or left out for the whole log")
    where, text = _log_text(storage_cfg, run_id, step)
    return where, "\n".join(text.splitlines()[-tail:]) if tail else text


def _log_text(storage_cfg, run_id: str, step: str) -> tuple[str, str]:
    from ensemw2s.storage import validate_name

    validate_name("run id", run_id)
    validate_name("step", step)
    path = local_log(run_id, step)
    if path.is_file():
        return str(path), path.read_text(encoding="utf-8", errors="replace")
    store = open_store(storage_cfg)
    with tempfile.TemporaryDirectory(prefix="ensemw2s-log-") as tmp:
        try:
            got = store.get_file(run_id, step, STEP_LOG, Path(tmp) / STEP_LOG)
        except MissingObjectError:
            steps = store.list_steps(run_id)
            hint = (f"steps of this run: {', '.join(s for s in steps if s != keys.RUN_SUMMARY)}" if steps
                    else "no such run (`ensemw2s runs list`)")
            raise MissingObjectError(f"no log of step {step!r} of run {run_id!r}: not at {path} nor at "
                                     f"{store.uri(run_id, step, STEP_LOG)} ({hint})") from None
        return store.uri(run_id, step, STEP_LOG), got.read_text(encoding="utf-8", errors="replace")
