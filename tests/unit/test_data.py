"""Rows, ids, JSONL, prompts and the difficulty split (generated rows); the dataset registry (in assets) and the
real datasets in one test each."""
import json
import re

import pytest

from ensemw2s import assets, data
from ensemw2s.config import DataConfig


def _row(i, difficulty=None, split=None):
    q = f"question number {i}?"
    choices = [f"opt{i}a", f"opt{i}b", f"opt{i}c"]
    return {"id": data.stable_id(q, choices), "question": q, "choices": choices, "answer": choices[1],
            "answer_index": 1, "difficulty": difficulty, "source": "gen", "meta": {}, "split": split}


def _small_cfg(**kw):
    base = dict(easy_train=10, easy_val=5, easy_test=5, hard_pool=10, hard_test=5)
    base.update(kw)
    return DataConfig(**base)


def test_two_dataset_split_disjoint_deterministic_and_sized():
    easy = [_row(i) for i in range(40)]
    hard = [_row(1000 + i) for i in range(40)]
    a = data.split_rows(_small_cfg(), easy, hard, seed=0)
    b = data.split_rows(_small_cfg(), list(reversed(easy)), list(reversed(hard)), seed=0)
    assert {k: [r["id"] for r in v] for k, v in a.items()} == {k: [r["id"] for r in v] for k, v in b.items()}
    ids = [r["id"] for v in a.values() for r in v]
    assert len(ids) == len(set(ids)), "an id is in two splits"
    assert {k: len(v) for k, v in a.items()} == {"easy_test": 5, "hard_test": 5, "easy_val": 5,
                                                   "easy_train": 10, "hard_pool": 10}
    c = data.split_rows(_small_cfg(), easy, hard, seed=1)
    assert [r["id"] for r in c["easy_train"]] != [r["id"] for r in a["easy_train"]]


def test_one_dataset_split_by_difficulty_puts_easy_rows_low():
    rows = [_row(i, difficulty=float(i)) for i in range(80)]
    s = data.split_rows(_small_cfg(easy="jsonl", hard="jsonl", difficulty="column", difficulty_column="d"),
                        rows, None, seed=0)
    assert max(r["difficulty"] for k in ("easy_train", "easy_val", "easy_test") for r in s[k]) < 40
    assert min(r["difficulty"] for k in ("hard_pool", "hard_test") for r in s[k]) >= 40


def test_official_splits_are_respected():
    easy = [_row(i, split=("train", "validation", "test")[i % 3]) for i in range(90)]
    hard = [_row(500 + i, split=("train", "test")[i % 2]) for i in range(60)]
    s = data.split_rows(_small_cfg(), easy, hard, seed=0)
    by_id = {r["id"]: r["split"] for r in easy + hard}
    assert {by_id[r["id"]] for r in s["easy_test"]} == {"test"}
    assert {by_id[r["id"]] for r in s["easy_train"]} == {"train"}
    assert {by_id[r["id"]] for r in s["hard_test"]} == {"test"}
    assert "split" not in s["easy_test"][0]


def test_empty_split_is_an_error():
    with pytest.raises(data.DataError, match=r"data.easy_train: 10 rows needed but only 0 available .*10 easy rows "
                                             r"read after filtering, shared by the easy splits"):
        data.split_rows(_small_cfg(), [_row(i) for i in range(10)], [_row(900 + i) for i in range(20)], seed=0)


def test_random_split_baseline_runs():
    rows = [_row(i) for i in range(80)]
    s = data.split_rows(_small_cfg(easy="jsonl", hard="jsonl", difficulty="random"), rows, None, seed=0)
    assert sum(len(v) for v in s.values()) == 35


@pytest.mark.parametrize("mutate, message", [
    (lambda r: r.pop("choices"), "missing field(s) choices"),
    (lambda r: r.update(answer_index=7), "answer_index 7 is out of range"),
    (lambda r: r.update(choices=[], answer_index=None), "empty choices"),
    (lambda r: r.update(answer="not an option"), "answer does not equal"),
])
def test_bad_rows_name_the_id(tmp_path, mutate, message):
    r = _row(1)
    r.pop("split")
    mutate(r)
    p = tmp_path / "x.jsonl"
    p.write_text(json.dumps(r) + "\n")
    with pytest.raises(data.DataError) as exc:
        data.read_jsonl(p)
    assert message in str(exc.value) and r["id"] in str(exc.value)


def test_duplicate_ids_truncated_and_bad_utf8(tmp_path):
    r = _row(1)
    p = tmp_path / "dup.jsonl"
    p.write_text(json.dumps(r) + "\n" + json.dumps(r) + "\n")
    with pytest.raises(data.DataError, match="duplicate id"):
        data.read_jsonl(p)
    t = tmp_path / "trunc.jsonl"
    t.write_text(json.dumps(r)[:-9])
    with pytest.raises(data.DataError, match="line 1 is not valid JSON"):
        data.read_jsonl(t)
    u = tmp_path / "utf.jsonl"
    u.write_bytes(b'{"id": "\xff"}\n')
    with pytest.raises(data.DataError, match="not valid UTF-8"):
        data.read_jsonl(u)


def test_prompt_and_matching():
    r = _row(3)
    prompt = data.format_prompt(r)
    assert prompt.startswith("Question: question number 3?") and "B. opt3b" in prompt and prompt.endswith("Answer:")
    assert data.match_choice(" Opt3B.", r["choices"]) == 1
    assert data.match_choice("B", r["choices"]) == 1
    assert data.match_choice("something else", r["choices"]) is None


def test_rows_with_unicode_line_separators_round_trip(tmp_path):
    rows = [_row(1), {**_row(2), "question": "a\u2028b\x85c\x1cd\u2029e?"}, _row(3)]
    data.write_jsonl(tmp_path / "r.jsonl", rows)
    back = data.read_jsonl(tmp_path / "r.jsonl")
    assert [r["question"] for r in back] == [r["question"] for r in rows]


def test_rc_prompt_omits_the_options_and_travels_with_the_row():
    r = {**_row(4), "prompt": "rc"}
    assert data.format_prompt(r) == "Question: question number 4?\nAnswer:"
    with pytest.raises(data.DataError, match="prompt 'xx' is not one of mc, rc"):
        data.format_prompt({**r, "prompt": "xx"})
    from ensemw2s.config import ConfigError

    with pytest.raises(ConfigError, match="data.prompt: 'letters' is not allowed; allowed values: mc, rc"):
        _small_cfg(prompt="letters").validate()


def test_registry_has_the_required_datasets():
    assert {"arc", "arc_easy", "arc_challenge", "sciq", "mmlu", "jsonl"} <= set(assets.DATASETS)
    assert all(spec["license"] for spec in assets.DATASETS.values())


def test_stable_id_ignores_choice_order_case_and_spacing():
    a = data.stable_id("Which gas do plants absorb?", ["oxygen", "carbon dioxide"])
    assert a == data.stable_id("which gas  do plants absorb? ", ["Carbon Dioxide", "oxygen"])
    assert a != data.stable_id("Which gas do plants absorb?", ["oxygen", "nitrogen"])
    assert len(a) == 16 and int(a, 16) >= 0


def test_data_does_not_import_the_config_or_the_registry():
    import ast
    import inspect

    tree = ast.parse(inspect.getsource(data))
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)} | {
        a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert imported & {"ensemw2s.config", "ensemw2s.assets"} == set(), imported
    assert data.PROMPTS == ("mc", "rc")


def test_real_arc_to_sciq_split(tiny_assets):
    cfg = DataConfig(easy="arc_easy", hard="sciq", easy_train=50, easy_val=20, easy_test=30, hard_pool=40,
                     hard_test=30)
    s = data.split_rows(cfg, assets.load_side(cfg, "easy"), assets.load_side(cfg, "hard"), seed=0)
    ids = [r["id"] for v in s.values() for r in v]
    assert len(ids) == len(set(ids)) == 170
    positions = [r["answer_index"] for r in s["hard_test"] + s["hard_pool"]]
    assert len(set(positions)) >= 3, "SciQ options must be shuffled"


def test_unscorable_choices_refused_in_a_users_file_kept_for_load_side(tmp_path):
    one = {**_row(1), "choices": ["only"], "answer": "only", "answer_index": 0}
    dup = {**_row(2), "choices": ["a", "b", " A "], "answer": "b", "answer_index": 1}
    for bad, msg in ((one, "has 1 choice; multiple-choice rows need at least 2"),
                     (dup, "has duplicate choices ('a' twice)")):
        p = tmp_path / "d.jsonl"
        data.write_jsonl(p, [_row(0), bad])
        with pytest.raises(data.DataError, match=re.escape(f"d.jsonl:2: row {bad['id']!r} {msg}")):
            data.read_jsonl(p)
        assert len(data.read_jsonl(p, strict_choices=False)) == 2
    assert data.choice_problem(["x", "y"]) is None
