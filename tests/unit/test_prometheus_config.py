"""``fogline up``'s Prometheus files: the targets of a stack's state, the config, its YAML, and the files
kept up to date as processes restart. ``promtool`` (when installed) checks the written config and targets."""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from fogline.local.prometheus import (
    CONFIG_FILE,
    TARGETS_FILE,
    PrometheusFiles,
    merge_targets,
    prometheus_config,
    prometheus_duration,
    render_yaml,
    scrape_targets,
)

TLS = {"ca": "/stack/tls/client/ca.pem", "client_cert": "/stack/tls/client/cert.pem",
       "client_key": "/stack/tls/client/key.pem", "admin_token_file": "/stack/tls/admin.token"}


def member(member_id: str, http_port: int) -> dict[str, Any]:
    return {"id": member_id, "grpc": f"127.0.0.1:{http_port + 1}", "http": f"127.0.0.1:{http_port}", "pid": 1}


def stack_state(tls: dict[str, str] | None = TLS) -> dict[str, Any]:
    """A state dict as ``LocalStack.state()`` writes it: a cloud, a worker, one region of an edge and two devices."""
    devices = [member("region-a-device-0", 9300), member("region-a-device-1", 9400)]
    regions = {"region-a": {"edge": member("region-a-edge", 9200), "devices": devices}}
    return {"workdir": "/stack", "cloud": member("cloud", 9000), "worker": member("worker-0", 9100),
            "regions": regions, "edge": regions["region-a"]["edge"], "devices": devices, "down": [], "tls": tls}


def by_id(targets: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {t["labels"]["instance_id"]: t for t in targets}


def test_every_process_of_the_stack_is_one_target_labelled_with_its_tier_id_and_region() -> None:
    targets = by_id(scrape_targets(stack_state()))
    assert targets == {
        "cloud": {"targets": ["127.0.0.1:9000"], "labels": {"tier": "cloud", "instance_id": "cloud"}},
        "worker-0": {"targets": ["127.0.0.1:9100"], "labels": {"tier": "worker", "instance_id": "worker-0"}},
        "region-a-edge": {"targets": ["127.0.0.1:9200"],
                          "labels": {"tier": "edge", "instance_id": "region-a-edge", "region": "region-a"}},
        "region-a-device-0": {"targets": ["127.0.0.1:9300"],
                              "labels": {"tier": "device", "instance_id": "region-a-device-0", "region": "region-a"}},
        "region-a-device-1": {"targets": ["127.0.0.1:9400"],
                              "labels": {"tier": "device", "instance_id": "region-a-device-1", "region": "region-a"}},
    }


def test_a_process_announcing_no_address_keeps_its_last_known_target() -> None:
    state = stack_state()
    first = scrape_targets(state)
    state["regions"]["region-a"]["devices"][1] = {"pid": 2}  # restarting: no endpoints announced yet
    now = scrape_targets(state)
    assert "region-a-device-1" not in by_id(now)
    merged = merge_targets(first, now)
    assert by_id(merged) == by_id(first)
    assert merged == first, "in the stack's order"


def test_a_new_address_replaces_the_old_one() -> None:
    state = stack_state()
    first = scrape_targets(state)
    state["cloud"] = member("cloud", 9900)
    assert by_id(merge_targets(first, scrape_targets(state)))["cloud"]["targets"] == ["127.0.0.1:9900"]


def test_durations_are_written_as_prometheus_reads_them() -> None:
    assert [prometheus_duration(s) for s in (5, 1.0, 0.5, 1.25, 60)] == ["5s", "1s", "500ms", "1250ms", "60s"]
    with pytest.raises(ValueError, match="positive"):
        prometheus_duration(0)


def test_a_secure_stack_is_scraped_over_https_with_its_ca_and_the_users_client_certificate() -> None:
    config = prometheus_config(Path("/stack/prometheus/targets.json"), TLS)
    assert config["global"] == {"scrape_interval": "5s", "scrape_timeout": "5s", "evaluation_interval": "5s"}
    [job] = config["scrape_configs"]
    assert job == {"job_name": "fogline", "metrics_path": "/metrics", "scheme": "https",
                   "tls_config": {"ca_file": TLS["ca"], "cert_file": TLS["client_cert"],
                                  "key_file": TLS["client_key"]},
                   "file_sd_configs": [{"files": ["/stack/prometheus/targets.json"]}]}
    assert "insecure_skip_verify" not in render_yaml(config)


def test_an_insecure_stack_is_scraped_over_plain_http() -> None:
    [job] = prometheus_config(Path("/t.json"), None, scrape_interval_s=1)["scrape_configs"]
    assert job["scheme"] == "http" and "tls_config" not in job


def test_a_long_interval_keeps_the_scrape_timeout_at_ten_seconds() -> None:
    assert prometheus_config(Path("/t.json"), None, scrape_interval_s=30)["global"]["scrape_timeout"] == "10s"


def test_yaml_is_block_style_with_json_scalars() -> None:
    value = {"a": [1, {"b": "x: y", "c": []}], "d": {}, "odd key": [[True, None]], "e": {"f": "quote\"d"}}
    assert render_yaml(value) == (
        'a:\n'
        '  - 1\n'
        '  - b: "x: y"\n'
        '    c: []\n'
        'd: {}\n'
        '"odd key":\n'
        '  - - true\n'
        '    - null\n'
        'e:\n'
        '  f: "quote\\"d"\n')


def test_the_files_are_written_and_the_targets_follow_the_stack(tmp_path: Path) -> None:
    files = PrometheusFiles(tmp_path, scrape_interval_s=1)
    state = stack_state()
    files.update(state)
    config = (tmp_path / CONFIG_FILE).read_text()
    assert 'scrape_interval: "1s"' in config and f'- "{tmp_path / TARGETS_FILE}"' in config
    assert json.loads((tmp_path / TARGETS_FILE).read_text()) == scrape_targets(state)

    restarting = copy.deepcopy(state)
    restarting["regions"]["region-a"]["devices"][0] = {"pid": 3}
    (tmp_path / CONFIG_FILE).unlink()
    files.update(restarting)
    assert json.loads((tmp_path / TARGETS_FILE).read_text()) == scrape_targets(state)
    assert not (tmp_path / CONFIG_FILE).exists(), "the config is written once per run"
    assert [p.name for p in (tmp_path / TARGETS_FILE).parent.iterdir()] == ["targets.json"], "no temporary left"


@pytest.mark.skipif(shutil.which("promtool") is None,
                    reason="promtool not found: apt-get install prometheus (Debian) to check the config with it")
@pytest.mark.parametrize("secure", [True, False], ids=["mtls", "insecure"])
def test_promtool_accepts_the_config_and_the_targets(tmp_path: Path, secure: bool) -> None:
    tls = None
    if secure:
        tls = {key: str(tmp_path / name) for key, name in
               (("ca", "ca.pem"), ("client_cert", "cert.pem"), ("client_key", "key.pem"))}
        for path in tls.values():
            Path(path).write_text("placeholder\n")  # promtool checks that the files exist, not what they hold
    PrometheusFiles(tmp_path).update(stack_state(tls))
    checked = subprocess.run(["promtool", "check", "config", str(tmp_path / CONFIG_FILE)],
                             capture_output=True, text=True, timeout=30, check=False)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS" in checked.stdout + checked.stderr
