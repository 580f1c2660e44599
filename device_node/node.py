"""Wiring of a device node: the model server core with ONNX Runtime, serving as tier "device" and
registering with its region's edge master."""

from __future__ import annotations

import socket
from dataclasses import dataclass, field

from fogline.adapters.runtime.onnx import OnnxRuntimeModel
from fogline.core.serving.repository import ConfigError, ModelConfig
from fogline.servers.model_server import ModelServer, ModelServerSettings


@dataclass(kw_only=True)
class DeviceSettings(ModelServerSettings):
    """A device node's settings: the model server's, and the ONNX Runtime providers."""

    node_id: str = field(default_factory=lambda: f"device-{socket.gethostname()}")
    """Unique id in the region; the edge master routes and reports by it."""
    providers: list[str] | None = None
    """ONNX Runtime execution providers, best first (default: CUDA if present, else CPU)."""


class DeviceNode(ModelServer):
    """Serves ONNX models with dynamic batching; ``settings.master`` is the edge master's control address."""

    def __init__(self, settings: DeviceSettings) -> None:
        super().__init__(settings, tier="device", service="device", server_name="fogline-device",
                         load_runtime=lambda config: load_onnx(config, settings.providers))


def load_onnx(config: ModelConfig, providers: list[str] | None) -> OnnxRuntimeModel:
    """The ONNX Runtime model of ``config``; ConfigError for any other platform."""
    if config.platform != "onnxruntime":
        raise ConfigError(f"{config.path}: a device node runs ONNX models only, not {config.platform!r}; "
                          "serve this model on a GPU worker (fogline worker)")
    return OnnxRuntimeModel(config, providers=providers)
