"""Where Fogline touches libraries: gRPC, aiohttp, Consul, ONNX Runtime, torch, prometheus-client."""
