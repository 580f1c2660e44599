"""Discovery and live configuration through Consul, on py-consul's asyncio client."""
