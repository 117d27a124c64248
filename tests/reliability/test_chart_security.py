"""Chart security, in short (tests/cluster/test_chart.py checks it in depth, for every values scenario):
the rendered pods run as non-root with a read-only root filesystem, no privilege escalation, all
capabilities dropped and resource limits."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def chart():
    pytest.importorskip("helm_python", reason="helm-python-sdk is in the [dev] extra")
    spec = importlib.util.spec_from_file_location(
        "_ensemw2s_test_chart", REPO / "tests/cluster/test_chart.py"
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("scenario", ["default", "recurring", "gpu-suspended", "multiuser"])
def test_pods_are_locked_down(chart, scenario):
    rendered = chart.Rendered(chart._values(chart.SCENARIOS[scenario]))
    pods = rendered.pod_templates()
    assert pods
    for pod in pods:
        spec = pod["spec"]
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec.get("hostNetwork", False) is False and spec.get("hostPID", False) is False
        for c in chart._containers(pod):
            sc = c["securityContext"]
            assert sc["runAsNonRoot"] is True and sc.get("runAsUser", 1) != 0
            assert sc["readOnlyRootFilesystem"] is True
            assert sc["allowPrivilegeEscalation"] is False
            assert sc.get("privileged", False) is False
            assert sc["capabilities"]["drop"] == ["ALL"] and not sc["capabilities"].get("add")
            assert c["resources"]["limits"]["cpu"] and c["resources"]["limits"]["memory"]
