"""Live configuration from Consul KV: the catalog and policy parse, and a bad value keeps the last good one."""

from __future__ import annotations

from fogline.adapters.consul.client import ConsulSettings
from fogline.adapters.consul.discovery import ConsulDiscovery, LiveConfig

CATALOG = b'[models.alias]\nplacement = "device"\ndevice_model = "mlp"\n'


def test_catalog_and_policy_are_read_from_their_keys() -> None:
    live = LiveConfig()
    live.update({"fogline/catalog": CATALOG, "fogline/policy": b"device_queue_limit = 7\n"}, "fogline")
    assert live.catalog is not None and live.catalog.names() == ["alias"]
    assert live.policy == {"device_queue_limit": 7} and live.error is None
    live.update({}, "fogline")  # keys deleted: back to no override
    assert live.catalog is None and live.policy is None


def test_a_bad_value_is_reported_and_the_last_good_one_kept() -> None:
    live = LiveConfig()
    live.update({"fogline/catalog": CATALOG}, "fogline")
    live.update({"fogline/catalog": b"[models.alias]\nplacement = 'moon'\n"}, "fogline")
    assert live.catalog is not None and live.catalog.names() == ["alias"]
    assert live.error is not None and "consul kv fogline/catalog" in live.error and "placement must be one of" in live.error
    live.update({"fogline/policy": b"queue = 3\n"}, "fogline")
    assert live.error == "consul kv fogline/policy: unknown keys ['queue']; known: ['device_queue_limit', " \
                         "'escalation_timeout_s']"


def test_the_discovery_description_never_shows_the_token() -> None:
    discovery = ConsulDiscovery(consul=ConsulSettings(address="10.0.0.2:8500", token="s3cr3t-token"))
    assert "s3cr3t" not in repr(discovery) and "s3cr3t" not in str(discovery.describe())
    assert discovery.describe()["token"] == "<set>"
