"""Fogline's domain core: plain Python with injected clocks, settings and upstreams. It imports no
grpc, aiohttp, consul, onnxruntime or torch (an import contract holds it to that)."""
