"""Shared fixtures: repository paths, the real S3 server (tests/s3_fixtures.py), real assets."""
import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
os.environ.setdefault("ENSEMW2S_PROGRESS", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import isolation  # noqa: E402
from s3_fixtures import *  # noqa: E402,F401,F403  (s3_server, s3_env, store)

_USER = {}  # the user's home, its snapshot and the session's own home (pytest_configure)


def pytest_configure(config):
    """Before anything is collected: the session (and every process it starts) gets its own ENSEMW2S_HOME with
    links to the user's assets, and none of the user's S3 settings (tests/isolation.py)."""
    from ensemw2s import assets

    user_home = assets.home()
    _USER["home"] = user_home
    _USER["before"] = isolation.snapshot(user_home)
    _USER["test_home"] = isolation.isolate(user_home)


def pytest_sessionfinish(session, exitstatus):
    """The suite must leave the user's home and object store as it found them: fail the session otherwise."""
    if "home" not in _USER:
        return
    changed = isolation.changes(_USER["before"], isolation.snapshot(_USER["home"]))
    if changed:
        lines = "\n  ".join(changed)
        session.config.get_terminal_writer().line(
            f"\nerror: the test session changed the user's ENSEMW2S_HOME {_USER['home']} (or its running S3 "
            f"server's objects); tests must use their own home and buckets (tests/isolation.py). Unless a run of "
            f"your own was writing there at the same time, this is a test leak:\n  {lines}", red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_unconfigure(config):
    if "test_home" in _USER:
        isolation.release(_USER["test_home"])


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture(scope="session")
def tiny_assets():
    """The tiny random-init models and the datasets that `make setup` prepares."""
    from ensemw2s import assets

    missing = [n for n in ("tiny-weak", "tiny-strong") if not (assets.home() / "models" / n).is_dir()]
    if missing:
        pytest.fail(f"assets {missing} are not set up: run `make setup` first")
    return assets.home()
