"""A diverging fine-tune stops with a one-line TrainingError and saves nothing (issue 25: `lr=inf` trained a NaN
expert and the step exited 0; a finite but absurd lr diverges the same way, so the guard is in the loss).

This is ``train_sft`` itself, with the lr=1e-4 control that the same run trains and saves; the bad-input
catalogue's ``training-diverges`` row (tests/reliability/test_bad_inputs.py) runs the real train_expert step."""
import pytest

from ensemw2s.config import ModelSection
from ensemw2s.errors import TrainingError, UserError


def _rows(n=8):
    return [{"id": f"q{i}", "question": f"What is {i} plus one?", "choices": [str(i + 1), str(i + 2)],
             "answer": str(i + 1), "answer_index": 0} for i in range(n)]


@pytest.mark.parametrize("lr, diverges", [(1e30, True), (1e-4, False)])
def test_non_finite_loss_stops_training(tmp_path, lr, diverges):
    from ensemw2s.modeling import load_causal_lm
    from ensemw2s.training import encode_rows, train_sft

    section = ModelSection(model="tiny-weak")
    section.train.lr, section.train.max_steps, section.train.batch_size = lr, 4, 4
    section.train.warmup_ratio = 0.0
    _, tok = load_causal_lm("tiny-weak")
    enc = encode_rows(tok, _rows(), section.train.max_length)
    out = tmp_path / "model"
    if not diverges:  # the control: the same run with a sane lr trains and saves
        stats = train_sft("tiny-weak", section, enc, token_weights=None, seed=0, out_dir=out, desc="expert r1")
        assert stats["steps"] == 4 and stats["train_loss"] == stats["train_loss"] and out.exists()
        return
    with pytest.raises(TrainingError, match=r"expert r1: the training loss is (nan|inf) at optimizer step \d+ of 4 "
                                            r"\(learning rate 1e\+30\); the model diverged and nothing was saved"):
        train_sft("tiny-weak", section, enc, token_weights=None, seed=0, out_dir=out, desc="expert r1")
    assert not out.exists()
    assert issubclass(TrainingError, UserError)  # the step prints one `error:` line and exits 1
