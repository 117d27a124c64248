"""One S3 Secret, described one way. The keys the compiled pipeline's pods read (``pipelines.k8s.S3_SECRET_KEYS``,
as they appear in the compiled platform spec) are exactly the keys that the chart's pods reference, that the
chart's NOTES and values.yaml tell users to create, and that every `kubectl create secret` in docs/cluster.md
and the README creates. No part of the chart sets ``S3_BUCKET`` (no code reads it: the bucket is the config's
``storage.bucket``)."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

helm = pytest.importorskip("helm_python", reason="helm-python-sdk is in the [dev] extra")

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "ensemw2s"
VALUES_FILES = [None, *sorted((CHART / "ci").glob("*.yaml"))]


def _commands(text: str) -> list[str]:
    """Every `kubectl ... create secret generic ...` command in ``text`` (continuation lines joined, comment
    markers of values.yaml dropped)."""
    joined = re.sub(r"\\\n\s*#?", " ", text)
    return [line for line in joined.splitlines()
            if re.match(r"\s*#?\s*kubectl\b.*\bcreate secret generic\b", line)]


def _keys(command: str) -> set[str]:
    return set(re.findall(r"--from-literal=([A-Za-z0-9_.-]+)=", command))


@pytest.fixture(scope="module")
def pipeline_keys() -> set[str]:
    from pipelines.k8s import S3_SECRET_KEYS

    # each Secret key becomes the environment variable of the same name (what the docs say)
    assert all(key == env for key, env in S3_SECRET_KEYS.items())
    return set(S3_SECRET_KEYS)


def test_the_compiled_pipeline_reads_those_keys(pipeline_keys, tmp_path):
    from pipelines.ensemw2s import compile_pipeline

    from ensemw2s.config import load_config

    docs = list(yaml.safe_load_all(compile_pipeline(load_config(REPO / "configs/tiny.yaml"), tmp_path / "p.yaml",
                                                    for_cluster=True).read_text()))
    executors = docs[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    for name, executor in executors.items():
        read = {k["secretKey"] for s in executor["secretAsEnv"] for k in s["keyToEnv"]}
        assert read == pipeline_keys, name


@pytest.mark.parametrize("values_file", VALUES_FILES, ids=lambda p: p.stem if p else "default")
def test_the_chart_references_and_asks_for_exactly_those_keys(pipeline_keys, values_file):
    values = {} if values_file is None else helm.values_from_yaml(values_file.read_text(encoding="utf-8"))
    with helm.Chart.load(CHART) as chart:
        files = chart.render(values, name="r", namespace="ns", is_install=True)
    notes = files.pop("ensemw2s/templates/NOTES.txt")
    (command,) = _commands(notes)
    assert _keys(command) == pipeline_keys, f"NOTES.txt: {command}"
    text = "\n".join(files.values())
    assert "S3_BUCKET" not in text
    for doc in (d for t in files.values() for d in yaml.safe_load_all(t) if d):
        if doc["kind"] not in ("CronJob", "Job"):
            continue
        template = doc["spec"]["jobTemplate"]["spec"]["template"] if doc["kind"] == "CronJob" \
            else doc["spec"]["template"]
        for container in template["spec"]["containers"]:
            refs = {e["valueFrom"]["secretKeyRef"]["key"] for e in container["env"]
                    if "secretKeyRef" in e.get("valueFrom", {})}
            assert refs == pipeline_keys, doc["metadata"]["name"]


@pytest.mark.parametrize("path", ["charts/ensemw2s/values.yaml", "docs/cluster.md", "README.md",
                                  "docker/README.md"])
def test_every_documented_secret_has_exactly_those_keys(pipeline_keys, path):
    commands = _commands((REPO / path).read_text(encoding="utf-8"))
    if path in ("charts/ensemw2s/values.yaml", "docs/cluster.md"):
        assert commands, f"{path} should show how to create the Secret"
    for command in commands:
        assert _keys(command) == pipeline_keys, f"{path}: {command}"


def test_no_code_reads_s3_bucket():
    """S3_BUCKET was set by the old chart and read by nothing; it is gone from the chart (above). (The embedded
    SeaweedFS server scrubs it from weed's environment, which is not reading it.)"""
    reads = re.compile(r"""(getenv\(|environ\.get\(|environ\[)\s*["']S3_BUCKET["']""")
    for folder in ("src", "components", "pipelines"):
        for path in (REPO / folder).rglob("*.py"):
            assert not reads.search(path.read_text(encoding="utf-8")), path

