"""Pod plumbing for a Kubernetes cluster, in one place (applied only when compiling for a cluster).

GPU steps (train_expert, pseudo_label, train_student, evaluate on models) get the accelerator type and limit,
the node selector and tolerations from ``resources``; every step gets the S3 credentials from a Kubernetes
Secret as environment variables — never from pipeline parameters — and a memory/CPU request.
"""
from __future__ import annotations

from kfp import kubernetes

from ensemw2s.config import ResourcesConfig

S3_SECRET_KEYS = {"AWS_ACCESS_KEY_ID": "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY": "AWS_SECRET_ACCESS_KEY",
                  "S3_ENDPOINT_URL": "S3_ENDPOINT_URL"}


def apply(task, res: ResourcesConfig, *, gpu: bool):
    kubernetes.use_secret_as_env(task, secret_name=res.s3_secret_name, secret_key_to_env=S3_SECRET_KEYS)
    task.set_env_variable("HF_HUB_OFFLINE", "1")
    task.set_cpu_request(res.cpu_request)
    if gpu and res.accelerator_limit > 0:
        task.set_memory_request(res.gpu_memory_request)
        task.set_accelerator_type(res.accelerator_type)
        task.set_accelerator_limit(res.accelerator_limit)
        for label, value in res.node_selector.items():
            kubernetes.add_node_selector(task, label_key=label, label_value=str(value))
        for tol in res.tolerations:
            kubernetes.add_toleration(task, key=tol.get("key"), operator=tol.get("operator", "Equal"),
                                      value=tol.get("value"), effect=tol.get("effect"))
    else:
        task.set_memory_request(res.memory_request)
    return task
