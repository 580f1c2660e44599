"""Packaging promises: the edge tiers (and the cloud master) never import torch; a missing ONNX Runtime says what to install."""

from __future__ import annotations

import subprocess
import sys

import pytest

from fogline.adapters.runtime import onnx as onnx_runtime


@pytest.mark.parametrize("module", ["device_node.node", "edge_master.master", "fogline.cli", "fogline.sdk.client",
                                    "fogline.servers.model_server", "cloud_master", "fogline.core.escalation.router",
                                    "fogline.sdk.calibrate", "fogline.core.control.topology"])
def test_edge_tiers_and_the_sdk_never_import_torch(module: str) -> None:
    code = (f"import sys, {module}, fogline.local.stack, fogline.adapters.grpc.forward, fogline.adapters.runtime.onnx; "
            "sys.exit('torch' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def test_a_missing_onnx_runtime_names_the_extra_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # makes `import onnxruntime` fail
    with pytest.raises(RuntimeError, match=r"pip install 'fogline\[cpu\]'.*pip install 'fogline\[gpu\]'"):
        onnx_runtime.import_onnxruntime()


def test_provider_choice_prefers_cuda_and_rejects_unavailable_requests() -> None:
    assert onnx_runtime.choose_providers(["CPUExecutionProvider"]) == ["CPUExecutionProvider"]
    assert onnx_runtime.choose_providers(["TensorrtExecutionProvider", "CUDAExecutionProvider",
                                          "CPUExecutionProvider"]) == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    with pytest.raises(ValueError, match=r"execution providers \['CUDAExecutionProvider'\] are not available"):
        onnx_runtime.choose_providers(["CPUExecutionProvider"], ["CUDAExecutionProvider"])
