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

from s3_fixtures import *  # noqa: E402,F401,F403  (s3_server, s3_env, store)


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
