"""The results pages: self-contained static HTML (the plots embedded as base64 PNG data URIs, no script, no
server), the same page wherever it is shown.

- :func:`run_page`: one run — the results table, PGR and paired differences, accuracy by round, the expert
  diagnostics (:func:`diagnostics_section`: per-round table, pairwise disagreement, oracle), pseudo-label
  accuracy, per-step times (and, for a stored run, each step's status, artifacts and log). The report step
  writes it as ``report.html`` (the KFP UI's HTML artifact); ``ensemw2s runs page`` writes it per run and
  uploads it next to the run's report.
- :func:`index_page`: several runs — one row per run, the comparison table and plots, paired differences
  against the first run computed on the stored per-question predictions, and mean ± std over the seeds of a
  config.

Input: the run records of :mod:`ensemw2s.runs` (``run_id``, ``metrics``, optional ``config_summary``,
``status``, ``created``, ``steps``, ``report_uri``). Core module.
"""
from __future__ import annotations

import base64
import html
import re
from typing import Optional

from ensemw2s import plots
from ensemw2s.diagnostics import (
    DIAG_INTRO,
    NOT_RECORDED,
    ROUND_COLUMNS,
    best_expert,
    disagreement_matrix,
    has_diagnostics,
    round_rows,
)
from ensemw2s.evaluation import (
    MODEL_LABELS,
    NO_GAP_HINT,
    PGR_GAPS,
    PGR_NOTE,
    REPORT_COLUMNS,
    VERDICTS_TITLE,
    acc_with_interval,
    guarded,
    no_gap,
    paired_lines,
    pgr_shown,
    report_rows,
    verdict_lines,
)
from ensemw2s.stats import mean_std

CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px auto;max-width:1100px;color:#222;
padding:0 16px}
h1{font-size:1.45em}h2{font-size:1.15em;margin-top:1.6em;border-bottom:1px solid #ddd;padding-bottom:3px}
table{border-collapse:collapse;margin:8px 0;font-size:.9em}
th,td{border:1px solid #ccc;padding:3px 8px;text-align:left}th{background:#f2f4f7}
td.n{text-align:right;font-variant-numeric:tabular-nums}.muted{color:#777}.ok{color:#1a7f37}.bad{color:#c62828}
img{max-width:100%;border:1px solid #eee;display:block;margin:8px 0}
code{background:#f4f4f4;padding:1px 4px;border-radius:3px;font-size:.9em}
"""


def esc(x) -> str:
    return html.escape("" if x is None else str(x))


def fmt(v, signed: bool = False) -> str:
    if v is None:
        return "—"
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return esc(v)
    if isinstance(v, int):
        return str(v)
    return f"{v:+.3f}" if signed else f"{v:.3f}"


def img(png: bytes, alt: str) -> str:
    """An ``<img>`` with the PNG embedded (a data URI: the page needs no other file)."""
    return (f'<img alt="{esc(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">')


_NUM_RE = re.compile(r"[+\-−]?\d[\d.]*( ± [\d.]+)?|—|\[[^\]]*\]")


def _td(cell: str) -> str:
    """A cell; numbers (and their intervals) right-aligned."""
    text = re.sub(r"<[^>]+>", "", cell).strip()
    return f'<td class="n">{cell}</td>' if _NUM_RE.fullmatch(text) else f"<td>{cell}</td>"


def _table(head: list[str], rows: list[list[str]], *, cls: str = "") -> str:
    """``rows``: cells already escaped/formatted as HTML."""
    out = [f'<table class="{cls}"><thead><tr>' + "".join(f"<th>{esc(h)}</th>" for h in head) + "</tr></thead><tbody>"]
    out += ["<tr>" + "".join(_td(c) for c in r) + "</tr>" for r in rows]
    return "\n".join(out) + "</tbody></table>"


def _doc(title: str, body: list[str]) -> str:
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{esc(title)}</title><style>{CSS}</style></head><body>\n" + "\n".join(body)
            + "\n</body></html>\n")


def run_file(run_id: str) -> str:
    return f"run-{run_id}.html"


# --------------------------------------------------------------------------- one run


def results_section(m: dict) -> list[str]:
    """The results table (the rows of :func:`ensemw2s.evaluation.report_rows`), PGR and paired differences."""
    rows = [[esc(r[0]), *[esc(c) for c in r[1:]]] for r in report_rows(m)]
    body = [f"<p>Primary accuracy: <b>{esc(m.get('primary', 'loglik'))}</b> (ll = option log-likelihood, gen = "
            f"generation). ID = easy_test (n={esc(m.get('n_id'))}), OOD = hard_test (n={esc(m.get('n_ood'))}). "
            f"Weak experts: {esc(m.get('weak_model') or '?')}; strong student: {esc(m.get('strong_model') or '?')}.</p>",
            _table(list(REPORT_COLUMNS), rows, cls="results"),
            f"<p>{esc(PGR_NOTE)}</p>",
            "<ul class=\"pgr\">" + "".join(f"<li>{esc(pgr_shown(m, name)[1])}</li>" for name in PGR_GAPS) + "</ul>"]
    verdicts = verdict_lines(m)
    if verdicts:
        body.append(f"<p>{esc(VERDICTS_TITLE)}</p><ul class=\"verdicts\">"
                    + "".join(f"<li>{esc(v)}</li>" for v in verdicts) + "</ul>")
    if no_gap(m):
        body.append(f"<p class=\"no-gap\"><b>{esc(NO_GAP_HINT)}</b></p>")
    body.append("<p>Alphas by round: " + esc(", ".join(fmt(a) for a in m.get("alphas") or [])) + "</p>")
    pl = paired_lines(m)
    if pl:
        body.append("<ul>" + "".join(f"<li>{esc(x)}</li>" for x in pl) + "</ul>")
    return body


def diagnostics_section(m: dict) -> list[str]:
    """The expert diagnostics of a run (:mod:`ensemw2s.diagnostics`): the oracle next to the ensemble and the
    best expert alone, the mean disagreement, the per-round table, the pairwise disagreement matrices (ID, OOD)
    and the two plots; for a run made before each expert alone was stored, one line saying so."""
    body = ["<h2>Expert diagnostics</h2>"]
    if not has_diagnostics(m):
        body.append(f'<p class="muted diagnostics">{esc(NOT_RECORDED)}</p>')
        return body
    body.append(f"<p>{esc(DIAG_INTRO)} Accuracies with their 95 % Wilson interval; the best expert is picked on "
                "the test split itself (an optimistic reference).</p>")
    n = {tag: m.get(f"n_{tag}") for tag in ("id", "ood")}
    best = {tag: best_expert(m, tag) for tag in ("id", "ood")}
    rows = [["EnsemW2S ensemble", *[acc_with_interval(m.get(f"ensemble_acc_{t}"), n[t]) for t in ("id", "ood")]],
            ["best expert alone", *["—" if best[t][0] is None else
                                    f"{acc_with_interval(best[t][1], n[t])} (r{best[t][0]})" for t in ("id", "ood")]],
            ["oracle (any expert right)", *[acc_with_interval(m.get(f"oracle_acc_{t}"), n[t]) for t in ("id", "ood")]],
            ["mean pairwise disagreement", *[fmt(m.get(f"mean_disagreement_{t}")) for t in ("id", "ood")]]]
    body.append(_table(["", "ID", "OOD"], [[esc(c) for c in r] for r in rows], cls="diag-summary"))
    body.append("<p>Per round: eps_t and alpha_t, the effective sample size of the token weights D_t as a share of "
                "the answer tokens (1 = uniform), the share of answer tokens drawn, each expert alone and the "
                "ensemble of rounds 1..t.</p>")
    body.append(_table(list(ROUND_COLUMNS), [[str(r[0]), *[fmt(x) for x in r[1:]]] for r in round_rows(m)],
                       cls="diag-rounds"))
    rounds = m["diag_rounds"]
    if len(rounds) > 1:
        body.append("<p>Pairwise disagreement: the fraction of questions on which two experts choose different "
                    "options.</p>")
        for tag, name in plots.PANELS:
            mat = disagreement_matrix(m, tag)
            rows = [[f"r{a}", *["·" if i == j else fmt(v) for j, v in enumerate(mat[i])]]
                    for i, a in enumerate(rounds)]
            body.append(f"<p>{esc(name)}:</p>")
            body.append(_table(["", *[f"r{t}" for t in rounds]], rows, cls=f"disagree-{tag}"))
        body.append(img(plots.png_bytes(plots.plot_disagreement, m), "disagreement of the experts"))
    body.append(img(plots.png_bytes(plots.plot_expert_accuracy, m),
                    "accuracy by round, each expert alone and the ensemble"))
    return body


def _label_rows(m: dict) -> list[list[str]]:
    return [[esc(name), fmt(m.get(f"student_{src}_labels_accuracy_vs_gold"))] for src, name in plots.LABEL_SOURCES
            if m.get(f"student_{src}_labels_accuracy_vs_gold") is not None]


def run_page(rec: dict, *, title: Optional[str] = None, back: Optional[str] = None) -> str:
    """The page of one run (see the module docstring)."""
    m = rec.get("metrics") or {}
    rid = rec.get("run_id") or m.get("run_id") or "?"
    head = title or f"EnsemW2S run {rid}"
    body = [f"<h1>{esc(head)}</h1>"]
    if back:
        body.append(f'<p><a href="{esc(back)}">← all runs</a></p>')
    facts = [("config", rec.get("config_summary")), ("status", rec.get("status")), ("date (UTC)", rec.get("created")),
             ("seed / rounds", f"{m.get('seed', '?')} / {m.get('rounds', '?')}" if m else None),
             ("report", rec.get("report_uri"))]
    body.append("<p>" + "<br>".join(f"{esc(k)}: <code>{esc(v)}</code>" for k, v in facts if v) + "</p>")
    if not m:
        body.append("<p class=\"bad\">This run has no report yet: no results to show.</p>")
    else:
        body.append("<h2>Results</h2>")
        body += results_section(m)
        body.append("<h2>Accuracy by round</h2>")
        body.append(f"<p>{esc(plots.caption(1))}</p>")
        body.append(img(plots.png_bytes(plots.plot_by_round, [m]), "ensemble accuracy by round"))
        body += diagnostics_section(m)
        labels = _label_rows(m)
        if labels:
            body.append("<h2>Pseudo-label accuracy</h2>")
            body.append("<p>How many of each student's training labels (hard_pool) match the gold answer.</p>")
            body.append(_table(["labels", "accuracy vs gold"], labels))
            body.append(img(plots.png_bytes(plots.plot_label_accuracy, m), "pseudo-label accuracy"))
    steps = rec.get("steps") or []
    if steps:
        body.append("<h2>Steps</h2>")
        body.append("<p>Seconds of work of the execution that computed each step (a restored step was copied from "
                    "storage; its time is that of the run that computed it).</p>")
        rows = []
        for st in steps:
            cls = {"done": "ok", "restored": "ok", "incomplete": "bad"}.get(st["status"], "muted")
            rows.append([esc(st["key"]), f'<span class="{cls}">{esc(st["status"])}</span>',
                         "" if st.get("seconds") is None else f"{st['seconds']:.1f}",
                         f'<code>{esc(st["log_uri"])}</code>' if st.get("log_uri") else "",
                         "<br>".join(f"<code>{esc(u)}</code>" for u in (st.get("outputs") or {}).values())])
        body.append(_table(["step", "status", "seconds", "log", "artifacts"], rows, cls="steps"))
        times = [(st["key"], st.get("seconds"), st.get("restored")) for st in steps if st.get("seconds") is not None]
        if times:
            body.append(img(plots.png_bytes(plots.plot_step_times, times), "per-step times"))
    return _doc(head, body)


# --------------------------------------------------------------------------- several runs


INDEX_DIAG_COLUMNS = (("mean_disagreement_id", "mean disagreement ID"),
                      ("mean_disagreement_ood", "mean disagreement OOD"), ("oracle_acc_ood", "oracle OOD"))


def index_page(cmp: dict, groups: list[dict]) -> str:
    """The page of several runs: ``cmp`` from :func:`ensemw2s.runs.compare`, ``groups`` from
    :func:`ensemw2s.runs.seed_groups`."""
    recs = cmp["runs"]
    body = [f"<h1>EnsemW2S runs ({len(recs)})</h1>",
            "<p>Each run's own page has its results table, accuracy by round, expert diagnostics, pseudo-label "
            "accuracy and per-step times. Accuracies by the primary method; 95 % intervals are Wilson score "
            "intervals.</p>",
            "<h2>Runs</h2>"]
    # the experts' mean disagreement and the oracle, as columns where a run recorded them
    diag = [(k, h) for k, h in INDEX_DIAG_COLUMNS if any((r.get("metrics") or {}).get(k) is not None for r in recs)]
    rows = []
    for r in recs:
        m = r.get("metrics") or {}
        rows.append([f'<a href="{esc(run_file(r["run_id"]))}">{esc(r["run_id"])}</a>', esc(r.get("created")),
                     esc(r.get("status")), *[fmt(guarded(m, k)) for k in ("weak_single_acc_ood", "ensemble_acc_ood",
                                                                     "student_ensemble_acc_ood", "ceiling_acc_ood",
                                                                     "pgr_ens")],
                     *[fmt(m.get(k)) for k, _ in diag], esc(r.get("config_summary"))])
    body.append(_table(["run", "date (UTC)", "status", "weak OOD", "ensemble OOD", "student ← ens OOD", "ceiling OOD",
                        "PGR ens", *[h for _, h in diag], "config"], rows, cls="runs"))
    named = [(r["run_id"], r["metrics"]) for r in recs if r.get("metrics")]
    if len(named) > 1:
        body.append("<h2>Comparison</h2>")
        ids = [r["run_id"] for r in recs]
        rows = [[esc(k), *[fmt(v) for v in vals]] for k, vals in cmp["metrics"].items()
                if any(v is not None for v in vals)]
        body.append(_table(["metric", *ids], rows, cls="compare"))
        body.append(img(plots.png_bytes(plots.plot_runs, named, split="ood"), "accuracy by run, OOD"))
        body.append(img(plots.png_bytes(plots.plot_runs, named, split="id"), "accuracy by run, ID"))
        body.append(img(plots.png_bytes(plots.plot_by_round_runs, named), "ensemble accuracy by round, by run"))
    if cmp.get("paired"):
        body.append(f"<h2>Paired differences against {esc(cmp['ref'])}</h2>")
        body.append("<p>Run − reference on the questions both answered (per-question predictions stored with each "
                    "report), 95 % bootstrap interval and exact McNemar p.</p>")
        rows = []
        for p in cmp["paired"]:
            if "diff" not in p:
                rows.append([esc(p["run"]), esc(MODEL_LABELS[p["model"]]), esc(p["split"].upper()), "0", "—",
                             "no common questions", "—"])
                continue
            rows.append([esc(p["run"]), esc(MODEL_LABELS[p["model"]]), esc(p["split"].upper()), str(p["n"]),
                         fmt(p["diff"], True), f"[{fmt(p['ci_low'], True)}, {fmt(p['ci_high'], True)}]",
                         f"{p['mcnemar_p']:.3f}"])
        body.append(_table(["run", "model", "split", "n", "difference", "95 % CI", "McNemar p"], rows, cls="paired"))
    if groups:
        body.append("<h2>Seeds of one config (mean ± std)</h2>")
        rows = []
        for g in groups:
            cells = []
            for k in ("weak_single_acc_ood", "ensemble_acc_ood", "student_ensemble_acc_ood", "ceiling_acc_ood"):
                mean, std, n = mean_std([r["metrics"].get(k) for r in g["runs"]])
                cells.append("—" if mean is None else f"{mean:.3f} ± {std:.3f}")
            rows.append([esc(g["config"]), str(len(g["runs"])), *cells])
        body.append(_table(["config", "seeds", "weak OOD", "ensemble OOD", "student ← ens OOD", "ceiling OOD"], rows))
        body.append(img(plots.png_bytes(plots.plot_by_round, [r["metrics"] for r in groups[0]["runs"]],
                                        title="Ensemble accuracy by round"), "accuracy by round over seeds"))
    return _doc("EnsemW2S runs", body)
