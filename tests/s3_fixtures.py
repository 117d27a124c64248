"""Pytest fixtures for tests that need a real S3 server.

``s3_server`` (session): a SeaweedFS started with ``ensemw2s.s3server.serve`` in a temporary home and
stopped at the end of the session; or, when ``ENSEMW2S_TEST_S3_ENDPOINT`` is set (CI may start one), that
endpoint with ``ENSEMW2S_TEST_S3_ACCESS_KEY`` / ``ENSEMW2S_TEST_S3_SECRET_KEY`` (falling back to
``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` of the shell that started pytest, which tests/isolation.py
keeps out of the tests' own environment).
``s3_env`` (function): S3_ENDPOINT_URL / AWS_* set in the environment to reach that server.
``store`` (function): a checked :class:`ensemw2s.storage.Store` on a fresh bucket, emptied and removed after.
``store_factory`` (function): ``store_factory(**StorageConfig fields)`` for more stores on fresh buckets.

Load it from tests/conftest.py (tests/ is not on sys.path under --import-mode=importlib)::

    sys.path.insert(0, str(Path(__file__).parent)); from s3_fixtures import *  # noqa: E402,F401,F403

or with ``pytest_plugins = ["s3_fixtures"]`` after the same sys.path line.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

__all__ = ["S3Endpoint", "s3_env", "s3_server", "store", "store_factory", "unique_bucket"]


@dataclass(frozen=True)
class S3Endpoint:
    endpoint: str
    access_key: str
    secret_key: str = field(repr=False)
    home: Path | None = None  # the embedded server's home; None for an external endpoint


def unique_bucket() -> str:
    return f"ew2s-test-{uuid.uuid4().hex[:16]}"


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Endpoint]:
    external = os.environ.get("ENSEMW2S_TEST_S3_ENDPOINT")
    if external:
        from isolation import SAVED_ENV  # the suite removed the shell's AWS keys from its environment

        ak = os.environ.get("ENSEMW2S_TEST_S3_ACCESS_KEY") or SAVED_ENV.get("AWS_ACCESS_KEY_ID")
        sk = os.environ.get("ENSEMW2S_TEST_S3_SECRET_KEY") or SAVED_ENV.get("AWS_SECRET_ACCESS_KEY")
        if not (ak and sk):
            pytest.fail("ENSEMW2S_TEST_S3_ENDPOINT is set but no keys: set ENSEMW2S_TEST_S3_ACCESS_KEY and "
                        "ENSEMW2S_TEST_S3_SECRET_KEY (or AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY)")
        yield S3Endpoint(external, ak, sk)
        return
    from ensemw2s import s3server

    home = tmp_path_factory.mktemp("s3home")
    try:
        info = s3server.serve(home=home)
    except s3server.S3ServerError as exc:
        pytest.fail(f"cannot start the embedded SeaweedFS for the tests: {exc}")
    try:
        yield S3Endpoint(info.endpoint, info.access_key, info.secret_key, home)
    finally:
        s3server.stop(home)


@pytest.fixture
def s3_env(s3_server: S3Endpoint, monkeypatch: pytest.MonkeyPatch) -> S3Endpoint:
    monkeypatch.setenv("S3_ENDPOINT_URL", s3_server.endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_server.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_server.secret_key)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    for var in ("AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_REGION"):
        monkeypatch.delenv(var, raising=False)
    return s3_server


def _empty_and_remove(st) -> None:
    # best effort: the bucket name is unique anyway, and a failed cleanup must not fail the test
    with contextlib.suppress(Exception):
        keys = [o["Key"] for o in st._list("") if "Key" in o]
        if keys:
            st._delete_keys(keys)
        st.client.delete_bucket(Bucket=st.bucket)


@pytest.fixture
def store_factory(s3_env: S3Endpoint) -> Iterator[Callable[..., object]]:
    from ensemw2s.config import StorageConfig
    from ensemw2s.storage import Store

    made = []

    def make(**overrides):
        overrides.setdefault("bucket", unique_bucket())
        cfg = dataclasses.replace(StorageConfig(), **overrides)
        st = Store.from_config(cfg)
        st.check()
        made.append(st)
        return st

    yield make
    for st in made:
        _empty_and_remove(st)


@pytest.fixture
def store(store_factory):
    return store_factory()
