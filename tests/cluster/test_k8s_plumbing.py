"""The main pipeline compiled for a cluster: GPU requests, node selector, tolerations, the GPU model per step
module and retries on the GPU steps only; on every task the S3 Secret as env, memory requests and limits, a
scratch volume, the image pull secrets and the lease holder's identity; and no secret value anywhere in the
compiled YAML (parsed, not golden)."""
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
    "resources.memory_limit=10Gi",
    "resources.gpu_memory_limit=40Gi",
    "resources.scratch_size=5Gi",
    "resources.gpu_scratch_size=60Gi",
    "resources.retries=3",
    "resources.image_pull_secrets=[regcred, team-mirror]",
    "resources.gpu_types={default: NVIDIA-L4, train_student: NVIDIA-A100-SXM4-80GB}",
]
GPU_PREFIXES = ("train_single", "train_expert-", "pseudo_label-ensemble", "pseudo_label-single", "train_student-",
                "evaluate-student-", "evaluate-experts")
CPU_PREFIXES = ("split_data", "update_weights-", "report", "pseudo_label-gold", "start-run", "end-run")


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
        tasks[t["taskInfo"]["name"]] = {"container": container, "k8s": k8s.get(executor, {}), "task": t}
    return {"text": text, "tasks": tasks}


def _kind(name: str) -> str:
    if name.startswith(CPU_PREFIXES):
        return "cpu"
    assert name.startswith(GPU_PREFIXES), f"unclassified task {name}"
    return "gpu"


def test_every_task_is_classified(compiled):
    from ensemw2s.steps.keys import END_RUN, START_RUN

    names = set(compiled["tasks"])
    assert names == set(run_steps(3)) | {START_RUN, END_RUN}  # named by the one table of step keys
    kinds = [_kind(n) for n in names]
    assert kinds.count("gpu") == 1 + 3 + 2 + 3 + 3 + 1 and kinds.count("cpu") == 1 + 3 + 1 + 1 + 2
    # the table's GPU flag (also used by rerun-step --docker) says the same
    assert {k for k, s in run_steps(3).items() if s.gpu} == {n for n in names if _kind(n) == "gpu"}


def test_gpu_steps_get_accelerator_node_selector_and_tolerations(compiled):
    for name, t in compiled["tasks"].items():
        res, k8s = t["container"].get("resources", {}), t["k8s"]
        if _kind(name) == "gpu":
            acc = res.get("accelerator", {})
            assert acc.get("resourceType", acc.get("type")) == "nvidia.com/gpu", name
            assert str(acc.get("resourceCount", acc.get("count"))) == "2", name
            # the GPU model per step module (resources.gpu_types), as a node selector on the product label
            gpu = "NVIDIA-A100-SXM4-80GB" if name.startswith("train_student-") else "NVIDIA-L4"
            assert k8s["nodeSelector"]["labels"] == {"cloud.google.com/gke-accelerator": "nvidia-l4",
                                                     "pool": "gpu", "nvidia.com/gpu.product": gpu}, name
            tols = sorted(k8s["tolerations"], key=lambda x: x["key"])
            assert tols == [{"effect": "NoExecute", "key": "dedicated", "operator": "Equal", "value": "ml"},
                            {"effect": "NoSchedule", "key": "nvidia.com/gpu", "operator": "Exists"}], name
            assert t["container"]["image"] == "registry.example.org/ensemw2s:cuda-test", name
        else:
            assert "accelerator" not in res, name
            assert "nodeSelector" not in k8s and "tolerations" not in k8s, name
            assert t["container"]["image"] == "registry.example.org/ensemw2s:cpu-test", name  # gold labels too


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


def _quantity(res: dict, kind: str):
    return res.get(f"resource{kind.title()}", res.get(kind))


def test_memory_limits_retries_and_scratch_per_kind_of_step(compiled):
    for name, t in compiled["tasks"].items():
        res, k8s, task = t["container"].get("resources", {}), t["k8s"], t["task"]
        gpu = _kind(name) == "gpu"
        assert _quantity(res, "memoryRequest") in ((34.359738368, "32Gi") if gpu else (8.589934592, "8Gi")), name
        assert _quantity(res, "memoryLimit") in ((42.94967296, "40Gi") if gpu else (10.73741824, "10Gi")), name
        # preempted GPU nodes: retried with back-off; a CPU step that fails is a bug or bad data, not retried
        if gpu:
            assert task["retryPolicy"]["maxRetryCount"] == 3, name
            assert task["retryPolicy"]["backoffDuration"] == "60s" and task["retryPolicy"]["backoffFactor"] == 2
        else:
            assert "retryPolicy" not in task, name
        # scratch: an emptyDir with a size limit (KFP has no ephemeral-storage request), used by the steps
        (vol,) = k8s["emptyDirMounts"]
        assert vol["mountPath"] == "/scratch" and vol["sizeLimit"] == ("60Gi" if gpu else "5Gi"), name
        env = {e["name"]: e["value"] for e in t["container"].get("env", [])}
        assert env["ENSEMW2S_SCRATCH"] == "/scratch" and env["TMPDIR"] == "/scratch", name


def test_pull_secrets_and_the_lease_holder_reach_every_task(compiled):
    for name, t in compiled["tasks"].items():
        k8s = t["k8s"]
        assert [s.get("secretName") or s["secretNameParameter"]["runtimeValue"]["constant"]
                for s in k8s["imagePullSecret"]] == ["regcred", "team-mirror"], name
        # the KFP run's identity, from the pod's Argo workflow label (downward API, not in KFP's cache key)
        assert k8s["fieldPathAsEnv"] == [{"name": "ENSEMW2S_LEASE_HOLDER",
                                          "fieldPath": "metadata.labels['workflows.argoproj.io/workflow']"}], name


def test_no_gpu_request_leaves_gpu_steps_on_cpu_nodes(repo_root, tmp_path):
    from pipelines.ensemw2s import compile_pipeline

    cfg = load_config(repo_root / "configs" / "tiny.yaml", ["resources.accelerator_limit=0",
                                                            "resources.gpu_types={default: NVIDIA-L4}"])
    spec, platform = yaml.safe_load_all(compile_pipeline(cfg, tmp_path / "p.yaml").read_text())
    k8s = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    for e in spec["deploymentSpec"]["executors"].values():
        assert "accelerator" not in e["container"].get("resources", {})
    assert not any("nodeSelector" in e for e in k8s.values())
