"""Pod plumbing for a Kubernetes cluster, in one place (applied only when compiling for a cluster).

Every step: the S3 credentials from a Kubernetes Secret as environment variables (never pipeline
parameters), a CPU and memory request and a memory limit, a scratch ``emptyDir`` at ``/scratch`` with a size
limit (work folders, fetched inputs, temp files: ``ENSEMW2S_SCRATCH``, ``TMPDIR``), the image pull secrets of
``resources.image_pull_secrets``. GPU steps (the table's ``gpu`` flag: train_expert, pseudo_label ensemble/
single, train_student, evaluate) also get the accelerator type and limit, the node selector and tolerations,
the GPU model of ``resources.gpu_types`` for their module (node label ``resources.gpu_type_label``) and
``resources.retries`` retries with back-off (preempted GPU nodes). Tasks of a run (``lease=True``) see
their KFP run's Argo workflow name as ``ENSEMW2S_LEASE_HOLDER`` (downward API; not part of KFP's cache key),
the identity under which they hold the run id's lease (:mod:`ensemw2s.lease`). The service account is per
run (``ensemw2s submit``). docs/cluster.md, "Pods on a real cluster", says why each is what it is.
"""
from __future__ import annotations

from typing import Optional

from kfp import kubernetes

from ensemw2s.config import ResourcesConfig
from ensemw2s.lease import HOLDER_ENV
from ensemw2s.steps.stepio import SCRATCH_ENV

S3_SECRET_KEYS = {"AWS_ACCESS_KEY_ID": "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY": "AWS_SECRET_ACCESS_KEY",
                  "S3_ENDPOINT_URL": "S3_ENDPOINT_URL"}
SCRATCH_PATH = "/scratch"
# Argo labels every pod of a workflow with the workflow's name: one KFP run = one workflow
WORKFLOW_LABEL = "metadata.labels['workflows.argoproj.io/workflow']"
RETRY_BACKOFF = {"backoff_duration": "60s", "backoff_factor": 2.0, "backoff_max_duration": "900s"}


def apply(task, res: ResourcesConfig, *, gpu: bool, module: Optional[str] = None, lease: bool = False):
    kubernetes.use_secret_as_env(task, secret_name=res.s3_secret_name, secret_key_to_env=S3_SECRET_KEYS)
    task.set_env_variable("HF_HUB_OFFLINE", "1")
    task.set_cpu_request(res.cpu_request)
    if res.image_pull_secrets:
        kubernetes.set_image_pull_secrets(task, list(res.image_pull_secrets))
    use_gpu = gpu and res.accelerator_limit > 0
    scratch = res.gpu_scratch_size if use_gpu else res.scratch_size
    if scratch:
        kubernetes.empty_dir_mount(task, volume_name="scratch", mount_path=SCRATCH_PATH, size_limit=scratch)
        task.set_env_variable(SCRATCH_ENV, SCRATCH_PATH)
        task.set_env_variable("TMPDIR", SCRATCH_PATH)
    if lease:
        kubernetes.use_field_path_as_env(task, env_name=HOLDER_ENV, field_path=WORKFLOW_LABEL)
    if use_gpu:
        task.set_memory_request(res.gpu_memory_request)
        task.set_memory_limit(res.gpu_memory_limit)
        task.set_accelerator_type(res.accelerator_type)
        task.set_accelerator_limit(res.accelerator_limit)
        selector = dict(res.node_selector)
        gpu_type = res.gpu_types.get(module or "", res.gpu_types.get("default"))
        if gpu_type:
            selector[res.gpu_type_label] = gpu_type
        for label, value in selector.items():
            kubernetes.add_node_selector(task, label_key=label, label_value=str(value))
        for tol in res.tolerations:
            kubernetes.add_toleration(task, key=tol.get("key"), operator=tol.get("operator", "Equal"),
                                      value=tol.get("value"), effect=tol.get("effect"))
        if res.retries:
            task.set_retry(num_retries=res.retries, **RETRY_BACKOFF)
    else:
        task.set_memory_request(res.memory_request)
        task.set_memory_limit(res.memory_limit)
    return task
