"""Question rows: the schema, stable ids, JSONL reading/writing, prompts, answer matching and the difficulty
split (DESIGN.md §4.1, §5).

A row is ``{id, question, choices, answer, answer_index, difficulty, source, meta}`` (:data:`ROW_FIELDS`); a
dataset loader (registered in :mod:`ensemw2s.assets`) adds ``split`` (the dataset's own
train/validation/test split, or ``None`` when it has none). The split step turns the configured easy and hard
sides into five disjoint splits: ``easy_train``, ``easy_val``, ``easy_test`` (ID), ``hard_pool`` (to
pseudo-label) and ``hard_test`` (OOD).
"""
from __future__ import annotations

import hashlib
import json
import math
import unicodedata
from pathlib import Path
from typing import Iterable, Optional

from ensemw2s.errors import DataError

SPLITS = ("easy_train", "easy_val", "easy_test", "hard_pool", "hard_test")
ROW_FIELDS = ("id", "question", "choices", "answer", "answer_index", "difficulty", "source", "meta")
REQUIRED_FIELDS = ("id", "question", "choices", "answer", "answer_index")
LETTERS = "ABCDEFGHIJ"
PROMPTS = ("mc", "rc")  # the prompt forms (data.prompt in the config; row["prompt"] on a split row)


# --------------------------------------------------------------------------- rows


def _norm(text: str) -> str:
    return " ".join(unicodedata.normalize("NFKC", str(text)).lower().split())


def stable_id(question: str, choices: Iterable[str] = ()) -> str:
    """Stable example id, 16 hex: sha1 of the normalised question plus the normalised choices.

    Normalised = NFKC, lower-case, whitespace collapsed; the choices are sorted, so their order does not
    matter. The one id scheme of the project: the shipped datasets' ids are made with it too."""
    payload = _norm(question) + "\x1e" + "\x1f".join(sorted(_norm(c) for c in choices))
    return hashlib.sha1(payload.encode("utf-8")).hexdigest()[:16]


def choice_problem(choices: list[str]) -> Optional[str]:
    """Why a row's options cannot be scored, or None: one option is "right" for any model, and two equal
    options make the answer ambiguous (scoring picks the first of a tie)."""
    if len(choices) < 2:
        return f"has {len(choices)} choice; multiple-choice rows need at least 2"
    norm = [_norm(c) for c in choices]
    dup = next((c for c, n in zip(choices, norm) if norm.count(n) > 1), None)
    return None if dup is None else f"has duplicate choices ({dup!r} twice)"


def validate_row(row: dict, where: str, *, strict_choices: bool = True) -> dict:
    """Check one question row; raise DataError naming ``where`` and the row id. ``strict_choices=False`` lets
    rows through whose options cannot be scored (:func:`choice_problem`): the shipped datasets hold a few, which
    :func:`ensemw2s.assets.load_side` drops and counts; a user's own file is refused."""
    if not isinstance(row, dict):
        raise DataError(f"{where}: row is not a JSON object")
    rid = row.get("id", "<no id>")
    missing = [k for k in REQUIRED_FIELDS if k not in row]
    if missing:
        raise DataError(f"{where}: row {rid!r} is missing field(s) {', '.join(missing)}")
    if not isinstance(rid, str) or not rid:
        raise DataError(f"{where}: row id must be a non-empty string, got {rid!r}")
    if not isinstance(row["question"], str) or not row["question"].strip():
        raise DataError(f"{where}: row {rid!r} has an empty question")
    choices = row["choices"]
    if not isinstance(choices, list) or not all(isinstance(c, str) and c.strip() for c in choices):
        raise DataError(f"{where}: row {rid!r}: choices must be a list of non-empty strings")
    if not choices:
        raise DataError(f"{where}: row {rid!r} has empty choices (multiple-choice rows need options)")
    problem = choice_problem(choices) if strict_choices else None
    if problem:
        raise DataError(f"{where}: row {rid!r} {problem}")
    idx = row["answer_index"]
    if idx is not None:
        if isinstance(idx, bool) or not isinstance(idx, int):
            raise DataError(f"{where}: row {rid!r}: answer_index must be an integer or null, got {idx!r} "
                            f"({type(idx).__name__})")
        if not 0 <= idx < len(choices):
            raise DataError(f"{where}: row {rid!r}: answer_index {idx!r} is out of range for "
                            f"{len(choices)} choices")
        if row["answer"] != choices[idx]:
            raise DataError(f"{where}: row {rid!r}: answer does not equal choices[answer_index]")
    if not isinstance(row["answer"], str) or not row["answer"].strip():
        raise DataError(f"{where}: row {rid!r} has an empty answer")
    d = row.get("difficulty")
    if d is not None and (isinstance(d, bool) or not isinstance(d, (int, float)) or math.isnan(d)):
        raise DataError(f"{where}: row {rid!r}: difficulty must be a number or null, got {d!r}")
    return row


def read_jsonl(path: str | Path, *, validate: bool = True, strict_choices: bool = True) -> list[dict]:
    """Read question rows; invalid UTF-8, bad JSON (e.g. a truncated file), bad rows and duplicate ids are
    errors naming the file and line or row id (``strict_choices``: see :func:`validate_row`)."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"data file not found: {p}")
    rows, seen = [], set()
    try:
        text = p.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"{p}: not valid UTF-8 (byte {exc.start}): {exc.reason}") from None
    # split on "\n" only: str.splitlines() also breaks at U+2028, U+0085, \x1c.. that JSON strings may hold raw
    # (MMLU has such rows), which would cut a valid row in two
    for lineno, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{p}: line {lineno} is not valid JSON (truncated file?): {exc.msg}") from None
        if validate:
            validate_row(row, f"{p}:{lineno}", strict_choices=strict_choices)
            if row["id"] in seen:
                raise DataError(f"{p}: duplicate id {row['id']!r} (line {lineno})")
            seen.add(row["id"])
        rows.append(row)
    return rows


def write_jsonl(path: str | Path, rows: Iterable[dict], *, sort_keys: bool = True) -> int:
    """Write rows as UTF-8 JSON lines (through a temporary file renamed into place); return the row count.

    ``sort_keys=False`` keeps each row's own key order (the shipped datasets keep :data:`ROW_FIELDS` order)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    tmp = p.with_suffix(p.suffix + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False, sort_keys=sort_keys) + "\n")
            n += 1
    tmp.replace(p)
    return n


# --------------------------------------------------------------------------- prompts


def format_prompt(row: dict) -> str:
    """The prompt of a question row; the target is always `` <option text>``.

    ``row["prompt"]`` (set by split_data from ``data.prompt``): ``mc`` (default) = the question with lettered
    options, ending in ``Answer:``; ``rc`` = the question alone, ``Question: ...\nAnswer:`` (the "ranked
    classification" form, where each option is scored as a continuation without seeing the others).
    """
    style = row.get("prompt", "mc")
    if style == "rc":
        return f"Question: {row['question'].strip()}\nAnswer:"
    if style != "mc":
        raise DataError(f"row {row.get('id')!r}: prompt {style!r} is not one of {', '.join(PROMPTS)}")
    lines = [f"Question: {row['question'].strip()}"]
    for letter, choice in zip(LETTERS, row["choices"]):
        lines.append(f"{letter}. {choice.strip()}")
    lines.append("Answer:")
    return "\n".join(lines)


def format_target(text: str) -> str:
    return " " + text.strip()


def normalise_answer(text: str) -> str:
    """Lower-case, drop punctuation at the ends and collapse spaces (for generation match)."""
    return " ".join(text.strip().strip(".,;:!?\"'").lower().split())


def match_choice(generated: str, choices: list[str]) -> Optional[int]:
    """Index of the option the generated text names: its normalised text, or a bare option letter."""
    g = normalise_answer(generated.split("\n")[0])
    norm = [normalise_answer(c) for c in choices]
    if g in norm:
        return norm.index(g)
    for i, letter in enumerate(LETTERS[: len(choices)]):
        if g in (letter.lower(), f"{letter.lower()}.", f"({letter.lower()})") or g.startswith(
                f"{letter.lower()}. ") and g[3:] == norm[i]:
            return i
    return None


# --------------------------------------------------------------------------- split


def _rng_key(row_id: str, seed: int) -> str:
    return hashlib.sha1(f"{seed}:{row_id}".encode()).hexdigest()


def shuffled(rows: list[dict], seed: int) -> list[dict]:
    """Deterministic order that depends only on ids and seed (not on input order)."""
    return sorted(rows, key=lambda r: _rng_key(r["id"], seed))


def _take(rows: list[dict], n: int, used: set) -> list[dict]:
    out = []
    for r in rows:
        if len(out) >= n:
            break
        if r["id"] not in used:
            out.append(r)
            used.add(r["id"])
    return out


def needs_model_difficulty(cfg) -> bool:
    return cfg.easy == cfg.hard and cfg.difficulty in ("model_loss", "crossfit")


def difficulty_value(row: dict, method: str) -> Optional[float]:
    if method in ("native", "column", "level", "model_loss", "crossfit"):
        return row.get("difficulty")
    if method == "grade":
        return (row.get("meta") or {}).get("grade")
    return None


def _shortfall(cfg, name: str, got: int, easy_rows: list, hard_rows: list, n_read: Optional[int], e_has: bool,
               h_has: bool) -> str:
    """The message of a split that gets fewer rows than ``data.<name>``: how many it needs, how many there are."""
    side = "easy" if name.startswith("easy") else "hard"
    names = [n for n in SPLITS if n.startswith(side)]
    need = ", ".join(f"{n} {getattr(cfg, n)}" for n in names)
    have = len(easy_rows if side == "easy" else hard_rows)
    if n_read is None:
        read = f"{have} {side} rows read after filtering"
    else:
        read = f"{n_read} rows read after filtering, {have} of them on the {side} side"
    native = ""
    if e_has if side == "easy" else h_has:
        own = {"easy_train": "train", "easy_val": "validation", "easy_test": "test", "hard_pool": "train/validation",
               "hard_test": "test"}[name]
        native = f"; {name} takes only the dataset's own {own} rows"
    return (f"data.{name}: {getattr(cfg, name)} rows needed but only {got} available (data.easy={cfg.easy!r}, "
            f"data.hard={cfg.hard!r}, data.difficulty={cfg.difficulty!r}: {read}, shared by the {side} splits, "
            f"which need {sum(getattr(cfg, n) for n in names)} in all: {need}{native}); "
            + (f"lower data.{name} to at most {got} or give more rows" if got else "give more rows or lower the sizes"))


def split_rows(cfg, easy_rows: list[dict], hard_rows: Optional[list[dict]], seed: int) -> dict[str, list[dict]]:
    """Make the five disjoint splits.

    Two datasets (``hard_rows`` given): easy splits come from the easy dataset (its official splits when
    it has them), hard splits from the hard one. One dataset: rows are ranked by difficulty (ties broken by
    a seeded hash) and cut in half, lower half easy; ``random`` halves at random (the baseline).
    Rows with the dataset's official splits keep them (train -> easy_train/hard_pool, validation ->
    easy_val, test -> easy_test/hard_test).
    """
    n_read = None  # one dataset: how many rows it gave before they were cut into an easy and a hard half
    if hard_rows is None:
        rows = easy_rows
        n_read = len(rows)
        if cfg.difficulty == "random":
            ranked = shuffled(rows, seed + 1)
        else:
            scored = [r for r in rows if difficulty_value(r, cfg.difficulty) is not None]
            if rows and not scored:  # no rows at all: the size check below says how many are needed
                raise DataError(f"data.difficulty={cfg.difficulty!r}: no row of {cfg.easy!r} has a difficulty "
                                "value for this method")
            ranked = sorted(scored, key=lambda r: (difficulty_value(r, cfg.difficulty), _rng_key(r["id"], seed)))
        half = len(ranked) // 2
        easy_rows, hard_rows = ranked[:half], ranked[half:]
        if cfg.difficulty == "native" and cfg.easy == "arc":  # native labels: 0 easy / 1 hard
            easy_rows = [r for r in rows if r.get("difficulty") == 0.0]
            hard_rows = [r for r in rows if r.get("difficulty") == 1.0]
    used: set = set()
    out: dict[str, list[dict]] = {}
    e = shuffled(easy_rows, seed)
    h = shuffled(hard_rows, seed)
    e_has = {r.get("split") for r in e} >= {"train", "test"}
    h_has = {r.get("split") for r in h} >= {"train", "test"}

    def pick(pool, native, n):
        return _take([r for r in pool if native is None or r.get("split") in native], n, used)

    # test sets first, so the biggest budget never eats the held-out questions
    out["easy_test"] = pick(e, ("test",) if e_has else None, cfg.easy_test)
    out["hard_test"] = pick(h, ("test",) if h_has else None, cfg.hard_test)
    out["easy_val"] = pick(e, ("validation",) if e_has else None, cfg.easy_val)
    out["easy_train"] = pick(e, ("train",) if e_has else None, cfg.easy_train)
    out["hard_pool"] = pick(h, ("train", "validation") if h_has else None, cfg.hard_pool)
    for name in SPLITS:
        asked = getattr(cfg, name)
        if len(out[name]) < asked:  # never fewer rows than configured without saying so
            raise DataError(_shortfall(cfg, name, len(out[name]), easy_rows, hard_rows, n_read, e_has, h_has))
        out[name] = [{k: v for k, v in r.items() if k != "split"} for r in out[name]]
    return out
