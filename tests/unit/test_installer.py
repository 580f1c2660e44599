"""A device's installer (``fogline.servers.lifecycle.Installer``) against a model host that implements
the interface a model server gives it, with artefacts served from memory: what the node holds, serves
and reports as each plan arrives."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from fogline.core.lifecycle.plan import (
    DONE,
    FAILED,
    READY,
    ROLLED_BACK,
    RUNNING,
    ArtefactRef,
    ModelPlan,
    VersionManifest,
)
from fogline.errors import InternalError
from fogline.servers.lifecycle import INSTALLED_MARK, Installer
from tests.polling import until

CONFIG = 'platform = "onnxruntime"\n'


class Host:
    """A model server's lifecycle interface over a repository on disk; ``broken`` versions fail to load."""

    def __init__(self, repository: Path, loaded: dict[str, list[str]], broken: frozenset[str] = frozenset()) -> None:
        self.repository = repository
        self.loaded = loaded
        self.serving = {name: versions[-1] for name, versions in loaded.items()}
        self.broken = broken
        self.loads: list[tuple[str, str, bool]] = []

    def loaded_versions(self, name: str) -> list[str]:
        return sorted(self.loaded.get(name, []))

    def serve(self, name: str, version: str) -> None:
        self.serving[name] = version

    async def load(self, name: str, version: str | None = None, *, keep_old: bool = False,
                   serve: bool = True) -> Any:
        assert version is not None
        self.loads.append((name, version, serve))
        if version in self.broken:
            raise InternalError(f"model {name!r} version {version!r} cannot be loaded: the warm-up run failed")
        assert (self.repository / name / version / "model.onnx").is_file(), "loaded before its files were in"
        self.loaded.setdefault(name, []).append(version)

    async def unload(self, name: str, version: str | None = None) -> list[str]:
        assert version is not None
        self.loaded[name].remove(version)
        return [version]


def blob(data: bytes) -> tuple[str, bytes]:
    return "sha256:" + hashlib.sha256(data).hexdigest(), data


def serve_from(blobs: dict[str, bytes]) -> Any:
    async def open_stream(digest: str, offset: int) -> AsyncIterator[tuple[bytes, int]]:
        data = blobs[digest]
        yield data[offset:], len(data)
    return open_stream


def manifest(version: str, data: bytes) -> tuple[VersionManifest, dict[str, bytes]]:
    digest, _ = blob(data)
    return VersionManifest("cnn", version, (ArtefactRef("model.onnx", digest, len(data)),), CONFIG), {digest: data}


async def test_a_plan_installs_the_canary_beside_stable_then_done_unloads_the_old(tmp_path: Path) -> None:
    host = Host(tmp_path, {"cnn": ["1"]})
    (tmp_path / "cnn").mkdir()
    canary, blobs = manifest("2", b"onnx bytes of version 2")
    installer = Installer(host, serve_from(blobs), node_id="d1")
    stable = VersionManifest("cnn", "1")

    installer.apply([ModelPlan("cnn", "r1", stable, canary, canary_share=0.1, state=RUNNING)])
    await until(lambda: host.loaded_versions("cnn") == ["1", "2"], 5, "the canary to load")
    assert host.loads == [("cnn", "2", False)]  # beside the serving version, not instead of it
    assert host.serving["cnn"] == "1"
    assert (tmp_path / "cnn" / "2" / "model.onnx").read_bytes() == b"onnx bytes of version 2"
    assert (tmp_path / "cnn" / "2" / INSTALLED_MARK).exists()
    await until(lambda: [s.state for s in installer.states()] == [READY, READY], 5, "both ready")

    installer.apply([ModelPlan("cnn", "r1", canary, None, state=DONE)])
    await until(lambda: host.loaded_versions("cnn") == ["2"], 5, "version 1 to unload")
    assert host.serving["cnn"] == "2"


async def test_a_version_that_cannot_load_is_reported_the_old_stays_and_it_is_not_retried(tmp_path: Path) -> None:
    host = Host(tmp_path, {"cnn": ["1"]}, broken=frozenset({"3"}))
    (tmp_path / "cnn").mkdir()
    canary, blobs = manifest("3", b"a version that fails its warm-up")
    installer = Installer(host, serve_from(blobs), node_id="d1")
    plan = ModelPlan("cnn", "r2", VersionManifest("cnn", "1"), canary, canary_share=0.1, state=RUNNING)

    installer.apply([plan])
    states = await until(lambda: [s for s in installer.states() if s.state == FAILED], 5, "the failure")
    assert states[0].version == "3" and "the warm-up run failed" in states[0].error
    assert host.loaded_versions("cnn") == ["1"] and host.serving["cnn"] == "1"
    installer.apply([plan])  # the same plan again (every sync): no second attempt
    installer.apply([plan])
    await until(lambda: not any(not t.done() for t in installer._tasks.values()), 5, "the installer to settle")
    assert host.loads.count(("cnn", "3", False)) == 1

    installer.apply([ModelPlan("cnn", "r2", VersionManifest("cnn", "1"), None, state=ROLLED_BACK)])
    await until(lambda: not (tmp_path / "cnn" / "3").exists(), 5, "the fetched files of the rolled-back version to go")
    assert host.loaded_versions("cnn") == ["1"]


async def test_a_corrupted_artefact_never_reaches_the_repository(tmp_path: Path) -> None:
    host = Host(tmp_path, {"cnn": ["1"]})
    (tmp_path / "cnn").mkdir()
    canary, blobs = manifest("2", b"the real bytes")
    tampered = {digest: b"the evil bytes" for digest in blobs}
    installer = Installer(host, serve_from(tampered), node_id="d1")
    installer.apply([ModelPlan("cnn", "r3", VersionManifest("cnn", "1"), canary, canary_share=0.5, state=RUNNING)])
    failed = await until(lambda: [s for s in installer.states() if s.state == FAILED], 20, "the install to fail")
    assert "corrupted" in failed[0].error, failed
    assert not (tmp_path / "cnn" / "2").exists()
    assert host.loads == [] and host.loaded_versions("cnn") == ["1"]
