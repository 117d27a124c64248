"""The main pipeline compiled for a cluster: GPU requests, node selector and tolerations on the GPU steps
only, the S3 Secret as env on every step, and no secret value anywhere in the compiled YAML (parsed, not
golden)."""
from __future__ import annotations

import pytest
import yaml

from ensemw2s.config import load_config
from ensemw2s.steps.keys import run_steps

SECRET_VALUES = {"AWS_ACCESS_KEY_ID": "AKIATESTPLUMBING0001",
                 "AWS_SECRET_ACCESS_KEY": "plumbing-secret-9f2c1e7d",
                 "S3_ENDPOINT_URL": "http://s3-plumbing-test.invalid:8333"}
OVERRIDES = [
    "boosting.rounds=3",
    "resources.accelerator_type=nvidia.com/gpu",
    "resources.accelerator_limit=2",
    "resources.node_selector={cloud.google.com/gke-accelerator: nvidia-l4, pool: gpu}",
    "resources.tolerations=[{key: nvidia.com/gpu, operator: Exists, effect: NoSchedule},"
    " {key: dedicated, operator: Equal, value: ml, effect: NoExecute}]",
    "resources.s3_secret_name=team-ml-s3",
    "resources.image=registry.example.org/ensemw2s:cpu-test",
    "resources.gpu_image=registry.example.org/ensemw2s:cuda-test",
]
GPU_PREFIXES = ("train_expert-", "pseudo_label-ensemble", "pseudo_label-single", "train_student-",
                "evaluate-student-", "evaluate-experts")
CPU_PREFIXES = ("split_data", "update_weights-", "report", "pseudo_label-gold")


@pytest.fixture(scope="module")
def compiled(repo_root, tmp_path_factory):
    mp = pytest.MonkeyPatch()
    for k, v in SECRET_VALUES.items():  # as on a developer machine that also talks to S3: must not leak
        mp.setenv(k, v)
    try:
        from pipelines.ensemw2s import compile_pipeline

        cfg = load_config(repo_root / "configs" / "tiny.yaml", OVERRIDES)
        path = compile_pipeline(cfg, tmp_path_factory.mktemp("k8s") / "pipeline.yaml", for_cluster=True)
    finally:
        mp.undo()
    text = path.read_text()
    spec, platform = list(yaml.safe_load_all(text))
    k8s = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    tasks = {}
    for t in spec["root"]["dag"]["tasks"].values():
        executor = spec["components"][t["componentRef"]["name"]]["executorLabel"]
        container = spec["deploymentSpec"]["executors"][executor]["container"]
        tasks[t["taskInfo"]["name"]] = {"container": container, "k8s": k8s.get(executor, {})}
    return {"text": text, "tasks": tasks}


def _kind(name: str) -> str:
    if name.startswith(CPU_PREFIXES):
        return "cpu"
    assert name.startswith(GPU_PREFIXES), f"unclassified task {name}"
    return "gpu"


def test_every_task_is_classified(compiled):
    names = set(compiled["tasks"])
    assert names == set(run_steps(3))  # named by the one table of step keys
    kinds = [_kind(n) for n in names]
    assert kinds.count("gpu") == 3 + 2 + 3 + 3 + 1 and kinds.count("cpu") == 1 + 3 + 1 + 1


def test_gpu_steps_get_accelerator_node_selector_and_tolerations(compiled):
    for name, t in compiled["tasks"].items():
        res, k8s = t["container"].get("resources", {}), t["k8s"]
        if _kind(name) == "gpu":
            acc = res.get("accelerator", {})
            assert acc.get("resourceType", acc.get("type")) == "nvidia.com/gpu", name
            assert str(acc.get("resourceCount", acc.get("count"))) == "2", name
            assert k8s["nodeSelector"]["labels"] == {"cloud.google.com/gke-accelerator": "nvidia-l4",
                                                     "pool": "gpu"}
            tols = sorted(k8s["tolerations"], key=lambda x: x["key"])
            assert tols == [{"effect": "NoExecute", "key": "dedicated", "operator": "Equal", "value": "ml"},
                            {"effect": "NoSchedule", "key": "nvidia.com/gpu", "operator": "Exists"}], name
            assert t["container"]["image"] == "registry.example.org/ensemw2s:cuda-test", name
        else:
            assert "accelerator" not in res, name
            assert "nodeSelector" not in k8s and "tolerations" not in k8s, name
            if name != "pseudo_label-gold":  # shares the pseudo_label component (CUDA image), needs no GPU
                assert t["container"]["image"] == "registry.example.org/ensemw2s:cpu-test", name


def test_every_step_reads_s3_credentials_from_the_secret(compiled):
    from pipelines.k8s import S3_SECRET_KEYS

    for name, t in compiled["tasks"].items():
        secrets = t["k8s"].get("secretAsEnv")
        assert secrets and len(secrets) == 1, name
        s = secrets[0]
        assert s["secretName"] == "team-ml-s3", name
        assert {m["secretKey"]: m["envVar"] for m in s["keyToEnv"]} == S3_SECRET_KEYS, name
        env = {e["name"] for e in t["container"].get("env", [])}
        assert not env & set(SECRET_VALUES), f"{name}: a credential is a plain env var"


def test_no_secret_value_in_the_compiled_yaml(compiled):
    for value in SECRET_VALUES.values():
        assert value not in compiled["text"]
    assert "s3-plumbing-test" not in compiled["text"]
