"""The client SDK: :class:`Client`, :class:`SyncClient`, and finding edge masters in Consul."""

from fogline.sdk.client import Client, InferResult, ModelMetadata, SyncClient

__all__ = ["Client", "InferResult", "ModelMetadata", "SyncClient"]
