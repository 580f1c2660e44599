"""Device node: serves ONNX models from a model repository with dynamic batching (``fogline device``)."""

from device_node.node import DeviceNode, DeviceSettings

__all__ = ["DeviceNode", "DeviceSettings"]
