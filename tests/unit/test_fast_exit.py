"""A step process whose work is stored exits without tearing the interpreter down (stepio's fast exit), and
that never hides a failure: the exit code, the output and the other exit handlers are what an ordinary exit
gives. Each case runs in its own interpreter, as a step does."""
from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

PRE = textwrap.dedent("""
    import atexit, sys
    from ensemw2s.steps import stepio
    stepio._step_process = lambda: True  # what a KFP component or `python -m ensemw2s.steps.<step>` is
    atexit.register(lambda: print("handler registered before the step ran", flush=True))
""")


def _run(body: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", PRE + textwrap.dedent(body)], capture_output=True, text=True,
                          timeout=120)


def test_a_finished_step_exits_0_with_its_output_flushed():
    res = _run("""
        stepio._arm_fast_exit()
        atexit.register(lambda: print("handler registered after", flush=True))
        print("unflushed line at the end", end="")
    """)
    assert res.returncode == 0, res.stderr
    assert "unflushed line at the end" in res.stdout  # flushed before the process ended
    assert "handler registered after" in res.stdout  # handlers registered later run first, as always
    assert "handler registered before" not in res.stdout  # the teardown it skips: this is the fast path


@pytest.mark.parametrize("failure, code", [("raise ValueError('boom after publish')", 1),
                                           ("stepio._EXIT['failed'] = True\nraise SystemExit(3)", 3)])
def test_a_failure_after_the_work_keeps_its_exit_code(failure, code):
    res = _run("stepio._arm_fast_exit()\n" + failure + "\n")
    assert res.returncode == code, (res.stdout, res.stderr)
    assert "handler registered before the step ran" in res.stdout  # the ordinary exit ran every handler
    if code == 1:
        assert "boom after publish" in res.stderr


def test_step_main_with_a_failing_step_is_not_fast(tmp_path):
    """step_main's non-zero exit code (a user error) disarms the fast exit."""
    res = _run(f"""
        import argparse
        stepio._arm_fast_exit()
        from ensemw2s.errors import ConfigError
        def work(*a, **k):
            raise ConfigError("a wrong key")
        parser = stepio.base_parser("x", "test")
        raise SystemExit(stepio.step_main(parser, ["--config", {str(tmp_path / 'missing.yaml')!r}], work))
    """)
    assert res.returncode != 0, (res.stdout, res.stderr)
    assert "error:" in res.stderr


def test_not_armed_outside_a_step_process():
    res = subprocess.run([sys.executable, "-c", "from ensemw2s.steps import stepio; print(stepio._step_process())"],
                         capture_output=True, text=True, timeout=120)
    assert res.stdout.strip() == "False"
