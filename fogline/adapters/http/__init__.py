"""REST status endpoints (aiohttp): /healthz, /readyz, /v1/status, /metrics."""

from fogline.adapters.http.status import StatusSource, start_http

__all__ = ["StatusSource", "start_http"]
