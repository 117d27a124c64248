"""The Helm chart's workloads made runnable without a cluster: render with helm-python-sdk, then do with a pod
template what Kubernetes does (its ConfigMap at the mount path, each ``secretKeyRef`` resolved from a Secret,
the projected ServiceAccount token at its mount path, ``$(VAR)`` in args expanded from the container's env).
The resulting ``ensemw2s ...`` command can then run against the fake KFP server.

Used by tests/cluster/test_chart_values_e2e.py (every values file the chart ships) and, as stand-ins for
``helm`` and ``kubectl`` on PATH, by tests/cluster/test_first_run_doc.py (the commands of docs/cluster.md):

    python chartrun.py helm install|upgrade RELEASE CHART [-n NS] [--set K=V] [--set-file K=PATH] [-f FILE]
    python chartrun.py helm uninstall RELEASE [-n NS]
    python chartrun.py kubectl ...        (records the call; `create secret generic` keeps the Secret)

State (Secrets, the rendered release) lives in ``$CHARTRUN_STATE``; the KFP host of the pods is
``$CHARTRUN_KFP_HOST`` (the fake server) and the projected token ``$CHARTRUN_TOKEN``.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import yaml

TOKEN = "projected-token-for-tests-7d2a"


def deep_merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for key, value in over.items():
        out[key] = deep_merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) \
            else value
    return out


def render(chart: Path, values: dict, release: str, namespace: str) -> list[dict]:
    import helm_python as helm

    with helm.Chart.load(chart) as loaded:
        files = loaded.render(values, name=release, namespace=namespace, is_install=True)
    return [d for path, text in sorted(files.items()) if not path.endswith("NOTES.txt")
            for d in yaml.safe_load_all(text) if d]


def workloads(docs: list[dict]) -> dict[str, dict]:
    """component -> pod template: "submit" (CronJob), "schedule" (post-install hook), "unschedule" (pre-delete)."""
    out = {}
    for d in docs:
        if d["kind"] == "CronJob":
            out["submit"] = d["spec"]["jobTemplate"]["spec"]["template"]
        elif d["kind"] == "Job":
            out[d["metadata"]["labels"]["app.kubernetes.io/component"]] = d["spec"]["template"]
    return out


class Pod:
    """A pod template made runnable here: files at their mount paths, env resolved, args expanded."""

    def __init__(self, template: dict, docs: list[dict], secrets: dict[str, dict], root: Path, kfp_url: str,
                 token: str = TOKEN):
        spec = template["spec"]
        (self.container,) = spec["containers"]
        volumes = {v["name"]: v for v in spec["volumes"]}
        self.mounts: dict[str, Path] = {}
        for mount in self.container["volumeMounts"]:
            local = root / mount["mountPath"].strip("/").replace("/", "_")
            local.mkdir(parents=True, exist_ok=True)
            volume = volumes[mount["name"]]
            if "configMap" in volume:
                (cm,) = [d for d in docs if d["kind"] == "ConfigMap"
                         and d["metadata"]["name"] == volume["configMap"]["name"]]
                for key, text in cm["data"].items():
                    (local / key).write_text(text, encoding="utf-8")
            elif "projected" in volume:
                for source in volume["projected"]["sources"]:
                    (local / source["serviceAccountToken"]["path"]).write_text(token, encoding="utf-8")
            self.mounts[mount["mountPath"]] = local
        self.env: dict[str, str] = {}
        for var in self.container.get("env", []):
            if "value" in var:
                value = var["value"]
            else:
                ref = var["valueFrom"]["secretKeyRef"]
                secret = secrets.get(ref["name"])
                assert secret is not None, f"pod env {var['name']}: Secret {ref['name']!r} does not exist " \
                                           "(CreateContainerConfigError)"
                assert ref["key"] in secret, f"pod env {var['name']}: Secret {ref['name']!r} has no key " \
                                             f"{ref['key']!r} (CreateContainerConfigError)"
                value = secret[ref["key"]]
            self.env[var["name"]] = self.local_path(value)
        self.env["KFP_HOST"] = kfp_url  # the in-cluster API host, here the fake server

    def local_path(self, value: str) -> str:
        for mount_path, local in self.mounts.items():
            if value == mount_path or value.startswith(mount_path.rstrip("/") + "/"):
                return str(local) + value[len(mount_path.rstrip("/")):]
        return value

    def argv(self) -> list[str]:
        assert self.container["command"] == ["ensemw2s"], self.container["command"]
        expand = lambda a: re.sub(r"\$\((\w+)\)", lambda m: self.env[m.group(1)], a)  # noqa: E731
        return [self.local_path(expand(a)) for a in self.container["args"]]

    def run_subprocess(self, ensemw2s: str = "ensemw2s") -> int:
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", "/tmp"),
               "LANG": "C.UTF-8", **self.env}
        print(f"[pod] ensemw2s {' '.join(self.argv())}", flush=True)
        return subprocess.run([ensemw2s, *self.argv()], env=env, check=False).returncode


# ------------------------------------------------------------------------------------------ stand-ins


def _state() -> Path:
    path = Path(os.environ["CHARTRUN_STATE"])
    path.mkdir(parents=True, exist_ok=True)
    return path


def _load(name: str, default):
    path = _state() / name
    return json.loads(path.read_text()) if path.exists() else default


def _save(name: str, data) -> None:
    (_state() / name).write_text(json.dumps(data, indent=1))


def kubectl(argv: list[str]) -> int:
    with open(_state() / "kubectl.log", "a", encoding="utf-8") as log:  # appends: `kubectl ... &` runs alongside
        log.write(json.dumps(argv) + "\n")
    if "create" in argv and "secret" in argv and "generic" in argv:
        name = argv[argv.index("generic") + 1]
        data = dict(a.split("=", 2)[1:] for a in argv if a.startswith("--from-literal="))
        secrets = _load("secrets.json", {})
        secrets[name] = data
        _save("secrets.json", secrets)
    print(f"[kubectl stand-in] recorded: kubectl {' '.join(argv)}")
    return 0


def helm(argv: list[str]) -> int:
    import helm_python

    action, release, rest = argv[0], argv[1], argv[2:]
    namespace = rest[rest.index("-n") + 1] if "-n" in rest else "default"
    releases = _load("releases.json", {})
    secrets = _load("secrets.json", {})
    if action in ("install", "upgrade"):
        chart, values, i = Path(rest[0]), {}, 1
        while i < len(rest):
            flag = rest[i]
            if flag in ("--set", "--set-file", "-f", "--values", "--set-string", "-n", "--namespace"):
                arg = rest[i + 1]
                i += 2
            else:
                raise SystemExit(f"helm stand-in: flag {flag!r} is not supported")
            if flag == "--set":
                values = deep_merge(values, helm_python.parse_set_string(arg))
            elif flag == "--set-string":
                values = deep_merge(values, helm_python.parse_set_string_values(arg))
            elif flag == "--set-file":
                values = deep_merge(values, helm_python.parse_set_file(arg))
            elif flag in ("-f", "--values"):
                values = deep_merge(values, helm_python.values_from_yaml(Path(arg).read_text(encoding="utf-8")))
        docs = render(chart, values, release, namespace)
        releases[release] = docs
        _save("releases.json", releases)
        pods = workloads(docs)
        # what follows `helm install` on a cluster: the post-install hook runs; or, in cronjob mode, the
        # CronJob's first firing (as `kubectl create job --from=cronjob/...` would start it)
        component = "schedule" if "schedule" in pods else "submit"
        return _run(pods[component], docs, secrets, release, component)
    if action == "uninstall":
        docs = releases.pop(release)
        _save("releases.json", releases)
        pods = workloads(docs)
        return _run(pods["unschedule"], docs, secrets, release, "unschedule") if "unschedule" in pods else 0
    raise SystemExit(f"helm stand-in: {action!r} is not supported")


def _run(template: dict, docs: list[dict], secrets: dict, release: str, component: str) -> int:
    pod = Pod(template, docs, secrets, _state() / "pods" / release / component,
              os.environ["CHARTRUN_KFP_HOST"], os.environ.get("CHARTRUN_TOKEN", TOKEN))
    return pod.run_subprocess()


if __name__ == "__main__":
    tool, *args = sys.argv[1:]
    sys.exit({"helm": helm, "kubectl": kubectl}[tool](args))
