"""Prometheus for a ``fogline up`` stack: a complete ``prometheus.yml`` and the targets file it discovers.

``<workdir>/prometheus.yml`` has one scrape job, ``fogline``, whose targets come from
``<workdir>/prometheus/targets.json`` (``file_sd_configs``, which Prometheus watches): one target per process of
the stack, its REST port, labelled ``tier`` (cloud, worker, edge, device), ``instance_id`` (the process's id in
the stack) and ``region`` where it has one. A secure stack is scraped over HTTPS, verifying the members'
certificates (they name ``127.0.0.1``) against the stack's CA and presenting the users' client certificate::

    files = PrometheusFiles(workdir)
    files.update(stack.state())   # on every change of the stack: the config once, the targets each time
    # prometheus --config.file <workdir>/prometheus.yml

The building is pure (:func:`scrape_targets`, :func:`prometheus_config`, :func:`render_yaml`); only
:class:`PrometheusFiles` writes. NOTE: the target label ``tier`` is the tier of the process scraped; the
``tier`` label of ``fogline_routes_total`` (where an edge's answer ran) is kept as ``exported_tier``.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

CONFIG_FILE = "prometheus.yml"
TARGETS_FILE = Path("prometheus") / "targets.json"
JOB_NAME = "fogline"
DEFAULT_SCRAPE_INTERVAL_S = 5.0
MAX_SCRAPE_TIMEOUT_S = 10.0

Target = dict[str, Any]
"""One entry of a file_sd targets file: ``{"targets": ["host:port"], "labels": {...}}``."""

_PLAIN_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def members(state: Mapping[str, Any]) -> list[tuple[str, dict[str, Any], str]]:
    """Every process of the stack in a state dict (``LocalStack.state()``): (tier, its entry, region)."""
    out = [("cloud", state.get("cloud") or {}, ""), ("worker", state.get("worker") or {}, "")]
    for region, tier in (state.get("regions") or {}).items():
        out.append(("edge", tier.get("edge") or {}, region))
        out += [("device", device, region) for device in tier.get("devices") or ()]
    return out


def scrape_target(tier: str, member: Mapping[str, Any], region: str = "") -> Target | None:
    """The target of one process: its REST address and labels; None while it announces no address."""
    if not member.get("http") or not member.get("id"):
        return None
    labels = {"tier": tier, "instance_id": str(member["id"]), **({"region": region} if region else {})}
    return {"targets": [str(member["http"])], "labels": labels}


def scrape_targets(state: Mapping[str, Any]) -> list[Target]:
    """The targets of every process of the stack that has announced its REST address."""
    found = (scrape_target(tier, member, region) for tier, member, region in members(state))
    return [target for target in found if target is not None]


def merge_targets(previous: Iterable[Target], current: Iterable[Target]) -> list[Target]:
    """``current``, plus the last known target of each process it lacks (one restarting, or down): a
    process that is away is still scraped, so that Prometheus shows it down rather than forgets it. The
    order is that of first appearance: the stack's."""
    merged = {target["labels"]["instance_id"]: target for target in previous}
    merged.update((target["labels"]["instance_id"], target) for target in current)
    return list(merged.values())


def prometheus_duration(seconds: float) -> str:
    """A duration as Prometheus writes it: ``5s``, ``1500ms``."""
    ms = round(seconds * 1000)
    if ms <= 0:
        raise ValueError(f"a scrape interval must be positive, got {seconds} s")
    return f"{ms // 1000}s" if ms % 1000 == 0 else f"{ms}ms"


def tls_config(tls: Mapping[str, str]) -> dict[str, str]:
    """Prometheus's ``tls_config`` from a state file's ``tls``: the stack's CA, the users' client certificate."""
    return {"ca_file": tls["ca"], "cert_file": tls["client_cert"], "key_file": tls["client_key"]}


def scrape_job(targets_file: Path, tls: Mapping[str, str] | None) -> dict[str, Any]:
    """The ``fogline`` scrape job: file-based discovery from ``targets_file``; HTTPS with ``tls``."""
    job: dict[str, Any] = {"job_name": JOB_NAME, "metrics_path": "/metrics", "scheme": "https" if tls else "http"}
    if tls:
        job["tls_config"] = tls_config(tls)
    job["file_sd_configs"] = [{"files": [str(targets_file)]}]
    return job


def prometheus_config(targets_file: Path, tls: Mapping[str, str] | None, *,
                      scrape_interval_s: float = DEFAULT_SCRAPE_INTERVAL_S) -> dict[str, Any]:
    """A complete Prometheus configuration scraping the stack every ``scrape_interval_s``."""
    interval = prometheus_duration(scrape_interval_s)
    timeout = prometheus_duration(min(scrape_interval_s, MAX_SCRAPE_TIMEOUT_S))
    return {"global": {"scrape_interval": interval, "scrape_timeout": timeout, "evaluation_interval": interval},
            "scrape_configs": [scrape_job(targets_file, tls)]}


def render_yaml(value: Any, indent: int = 0) -> str:
    """``value`` (dicts, lists, JSON scalars) as block YAML; each scalar is written as JSON, which YAML reads."""
    return "".join(f"{line}\n" for line in _yaml_lines(value, indent))


def _yaml_lines(value: Any, indent: int) -> list[str]:
    pad = " " * indent
    if isinstance(value, Mapping) and value:
        return [line for key, item in value.items() for line in _yaml_entry(f"{pad}{_yaml_key(key)}:", item, indent)]
    if isinstance(value, list) and value:
        return [line for item in value for line in _yaml_item(pad, item, indent)]
    return [pad + json.dumps(value)]


def _yaml_entry(head: str, item: Any, indent: int) -> list[str]:
    if isinstance(item, Mapping | list) and item:
        return [head, *_yaml_lines(item, indent + 2)]
    return [f"{head} {json.dumps(item)}"]


def _yaml_item(pad: str, item: Any, indent: int) -> list[str]:
    """A list item: ``- `` then the item's first line, its other lines indented under it."""
    first, *rest = _yaml_lines(item, indent + 2)
    return [f"{pad}- {first[indent + 2:]}", *rest]


def _yaml_key(key: str) -> str:
    return key if _PLAIN_KEY.match(key) else json.dumps(key)


def _write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so that a reader (Prometheus's file watch) never sees half of it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


class PrometheusFiles:
    """Writes a stack's ``prometheus.yml`` and keeps its targets file up to date.

    The targets keep the last known address of a process that is restarting or down (see
    :func:`merge_targets`); the config is written on the first :meth:`update` of this run."""

    def __init__(self, workdir: Path, *, scrape_interval_s: float = DEFAULT_SCRAPE_INTERVAL_S) -> None:
        self.config_file = Path(workdir) / CONFIG_FILE
        self.targets_file = Path(workdir) / TARGETS_FILE
        self.scrape_interval_s = scrape_interval_s
        self._targets: list[Target] = []
        self._config_written = False

    def update(self, state: Mapping[str, Any]) -> None:
        """Rewrite the targets file from ``state`` (and write the config if not yet done)."""
        self._targets = merge_targets(self._targets, scrape_targets(state))
        _write_text_atomic(self.targets_file, json.dumps(self._targets, indent=2) + "\n")
        if not self._config_written:
            config = prometheus_config(self.targets_file, state.get("tls"), scrape_interval_s=self.scrape_interval_s)
            _write_text_atomic(self.config_file, HEADER + render_yaml(config))
            self._config_written = True


HEADER = ("# Written by `fogline up` on each start: Prometheus for this stack.\n"
          "#   prometheus --config.file <this file>\n"
          "# The targets are in the file_sd file below, rewritten whenever a process of the stack changes.\n")
