"""Model runtimes: the adapters to execution libraries (ONNX Runtime here; PyTorch on the GPU worker)."""
