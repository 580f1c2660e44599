"""Wiring of a GPU worker: the model server core running TorchScript models (and ONNX models through
ONNX Runtime) on CUDA when torch sees a GPU, CPU otherwise, as tier "cloud"."""

from __future__ import annotations

import socket
from dataclasses import dataclass, field
from typing import Any

from fogline.adapters.runtime import Runtime
from fogline.adapters.runtime.onnx import OnnxRuntimeModel
from fogline.adapters.runtime.torch import TorchModel, choose_device, describe_device, memory_usage
from fogline.core.serving.repository import ConfigError, ModelConfig
from fogline.servers.model_server import ModelServer, ModelServerSettings


@dataclass(kw_only=True)
class WorkerSettings(ModelServerSettings):
    """A GPU worker's settings: the model server's, and the device models run on."""

    node_id: str = field(default_factory=lambda: f"worker-{socket.gethostname()}")
    """Unique id among the cloud master's workers."""
    device: str | None = None
    """Where models run: "cpu", "cuda" or "cuda:N" (default: CUDA if torch sees a GPU, else CPU)."""


class GpuWorker(ModelServer):
    """Serves heavy models with dynamic batching; ``settings.master`` is the cloud master's control
    address (stand-alone without it). Its status adds the device and memory in use."""

    def __init__(self, settings: WorkerSettings) -> None:
        self.device = choose_device(settings.device)
        super().__init__(settings, tier="cloud", service="worker", server_name="fogline-worker",
                         load_runtime=self._runtime_for)

    def _runtime_for(self, config: ModelConfig) -> Runtime:
        if config.platform == "pytorch":
            return TorchModel(config, device=self.device)
        if config.platform == "onnxruntime":
            # CUDA through onnxruntime-gpu when installed; a worker held to the CPU keeps ONNX there too.
            return OnnxRuntimeModel(config, providers=["CPUExecutionProvider"] if self.device.type == "cpu" else None)
        raise ConfigError(f"{config.path}: a GPU worker cannot run platform {config.platform!r}")

    def extra_status(self) -> dict[str, Any]:
        """The device and the memory in use."""
        return {"device": describe_device(self.device), "memory": memory_usage(self.device)}
