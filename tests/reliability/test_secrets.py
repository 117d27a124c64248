"""Secrets: with known test credentials in the environment, neither the access key nor the secret key may
appear in the compiled pipeline, the logs of a run, any object the run stored (manifests, reports, JSON, the
artifacts themselves), the local kfp-local folder, the Dockerfiles or the rendered Helm chart; the embedded
server's secret key is never printed by ``ensemw2s storage serve|status``."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.s3

REPO = Path(__file__).resolve().parents[2]
# planted where no credentials should go (AWS's documented example keys, never real)
PLANTED = {
    "AWS_ACCESS_KEY_ID": "AKIAIOSFODNN7EXAMPLE",
    "AWS_SECRET_ACCESS_KEY": "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
}


def _secrets(s3) -> list[str]:
    return [s3.access_key, s3.secret_key]


def _leaks(text: str | bytes, secrets: list[str]) -> list[str]:
    data = text if isinstance(text, bytes) else text.encode("utf-8", "replace")
    return [s[:4] + "…" for s in secrets if s and s.encode() in data]


def test_run_logs_have_no_credentials(baseline):
    assert not _leaks(baseline.logs, _secrets(baseline.s3))


def test_stored_objects_have_no_credentials(baseline):
    st = baseline.store()
    keys = [o["Key"] for o in st._list(f"{st.prefix}/{baseline.run_id}/") if "Key" in o]
    manifests = [k for k in keys if k.endswith("/manifest.json")]
    assert len(manifests) >= 16 and any("/report/" in k for k in keys)
    for key in keys:  # every object: manifests, timing/config/summary JSON, reports, predictions, weights
        body = st.client.get_object(Bucket=st.bucket, Key=key)["Body"].read()
        assert not _leaks(body, _secrets(baseline.s3)), key


def test_local_kfp_folder_has_no_credentials(baseline):
    root = baseline.kfp_dir()
    files = [p for p in root.rglob("*") if p.is_file()]
    assert files, f"no kfp-local output under {root}"
    for p in files:
        assert not _leaks(p.read_bytes(), _secrets(baseline.s3)), p


@pytest.mark.parametrize("local", [False, True], ids=["cluster", "local"])
def test_compiled_pipeline_has_no_credentials(tmp_path, test_s3, local):
    env = dict(
        os.environ,
        S3_ENDPOINT_URL=test_s3.endpoint,
        AWS_ACCESS_KEY_ID=test_s3.access_key,
        AWS_SECRET_ACCESS_KEY=test_s3.secret_key,
    )
    out = tmp_path / "pipeline.yaml"
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "ensemw2s.cli",
            "compile",
            "--config",
            str(REPO / "configs/tiny.yaml"),
            "-o",
            str(out),
        ]
        + (["--local"] if local else []),
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    text = out.read_text()
    assert "ensemw2s" in text
    assert not _leaks(text + res.stdout + res.stderr, _secrets(test_s3))
    if not local:  # on a cluster the keys come from a Secret, by reference
        assert (
            "secretKeyRef" in text
            or "secretAsEnv" in text
            or "s3_secret_name" in text
            or "ensemw2s-s3" in text
        )


def test_dockerfiles_have_no_credentials():
    files = sorted((REPO / "docker").glob("Dockerfile*"))
    assert files
    for f in files:
        text = f.read_text()
        assert not _leaks(text, list(PLANTED.values()))
        assert not re.search(r"AKIA[0-9A-Z]{16}", text)
        for line in text.splitlines():  # no ENV/ARG that carries a credential value
            if re.match(r"\s*(ENV|ARG)\b", line) and re.search(
                r"(SECRET|ACCESS_KEY|PASSWORD|TOKEN)", line, re.IGNORECASE
            ):
                pytest.fail(f"{f.name}: credential-like build setting: {line.strip()}")


def _chart_module():
    pytest.importorskip("helm_python", reason="helm-python-sdk is in the [dev] extra")
    spec = importlib.util.spec_from_file_location(
        "_ensemw2s_test_chart", REPO / "tests/cluster/test_chart.py"
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_rendered_chart_has_no_credentials(test_s3, monkeypatch):
    chart = _chart_module()
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", test_s3.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", test_s3.secret_key)
    monkeypatch.setenv("S3_ENDPOINT_URL", test_s3.endpoint)
    for name, values in chart.SCENARIOS.items():
        text = "\n".join(chart._render(chart._values(values)).values())
        assert not _leaks(text, _secrets(test_s3)), name
        assert "kind: Secret" not in text


def test_storage_commands_never_print_the_secret(s3_server):
    if s3_server.home is None:
        pytest.skip("external S3 endpoint: no embedded server to ask")
    env = dict(os.environ, ENSEMW2S_HOME=str(s3_server.home))
    for args in (["storage", "status"], ["storage", "serve"]):
        res = subprocess.run(
            [sys.executable, "-m", "ensemw2s.cli", *args],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            check=False,
            timeout=120,
        )
        assert res.returncode == 0, res.stderr
        assert s3_server.endpoint in res.stdout
        assert s3_server.secret_key not in res.stdout + res.stderr
    res = subprocess.run(
        [sys.executable, "-m", "ensemw2s.s3server", "--home", str(s3_server.home), "status", "--json"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert res.returncode == 0 and s3_server.secret_key not in res.stdout + res.stderr
