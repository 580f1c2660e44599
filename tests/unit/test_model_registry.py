"""The model registry on real files: versions, digests, refusals, atomic index writes, reopening."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from fogline.core.lifecycle.registry import ModelRegistry, RegistryError, check_model_name
from fogline.core.serving.repository import ConfigError
from fogline.errors import ErrorCode, InvalidInputError, ModelNotFoundError

CONFIG = 'platform = "onnxruntime"\nmax_batch_size = 8\n'


def staged(root: Path, content: bytes = b"onnx-bytes", *, config: str = CONFIG, version: str = "1") -> Path:
    """A staged model version: config.toml and <version>/model.onnx holding ``content``."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "config.toml").write_text(config)
    (root / version).mkdir(exist_ok=True)
    (root / version / "model.onnx").write_bytes(content)
    return root


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@pytest.fixture
def registry(tmp_path: Path) -> ModelRegistry:
    return ModelRegistry(tmp_path / "store")


def test_add_list_show_and_the_blobs(registry: ModelRegistry, tmp_path: Path) -> None:
    record = registry.add("mlp", staged(tmp_path / "s"), note="first", signature={"inputs": []})
    assert (record.name, record.version, record.note, record.platform) == ("mlp", 1, "first", "onnxruntime")
    assert record.files == {"model.onnx": sha(b"onnx-bytes")} and record.config_digest == sha(CONFIG.encode())
    assert record.config_text == CONFIG and record.size_bytes == len(b"onnx-bytes") + len(CONFIG)
    assert record.created.endswith("Z") and record.signature == {"inputs": []}
    blob = registry.blob_path(record.files["model.onnx"])
    assert blob.read_bytes() == b"onnx-bytes" and blob.stat().st_mode & 0o222 == 0  # read-only
    with registry.open_blob(record.config_digest) as f:
        assert f.read() == CONFIG.encode()
    [model] = registry.list()
    assert model.name == "mlp" and model.latest == record == registry.version("mlp", 1)
    assert registry.show("mlp").to_json()["latest"] == 1


def test_versions_count_up_from_the_highest(registry: ModelRegistry, tmp_path: Path) -> None:
    assert registry.add("mlp", staged(tmp_path / "a", b"a")).version == 1
    assert registry.add("mlp", staged(tmp_path / "b", b"b"), version=5).version == 5
    assert registry.add("mlp", staged(tmp_path / "c", b"c")).version == 6
    assert [v.version for v in registry.show("mlp").versions] == [1, 5, 6]


def test_an_existing_version_is_refused(registry: ModelRegistry, tmp_path: Path) -> None:
    registry.add("mlp", staged(tmp_path / "a"))
    with pytest.raises(InvalidInputError, match="version 1 of mlp exists"):
        registry.add("mlp", staged(tmp_path / "b", b"other"), version=1)
    with pytest.raises(InvalidInputError, match="version 1 of mlp exists"):
        registry.check_version_free("mlp", 1)
    with pytest.raises(InvalidInputError, match="numbered from 1"):
        registry.add("mlp", staged(tmp_path / "c"), version=0)
    assert [v.version for v in registry.show("mlp").versions] == [1]


def test_unknown_names_versions_and_blobs_are_not_found_naming_what_exists(registry: ModelRegistry,
                                                                            tmp_path: Path) -> None:
    registry.add("mlp", staged(tmp_path / "a"))
    with pytest.raises(ModelNotFoundError, match=r"no model 'cnn' in the registry; it has \['mlp'\]") as info:
        registry.show("cnn")
    assert info.value.code is ErrorCode.NOT_FOUND
    with pytest.raises(ModelNotFoundError, match=r"model 'mlp' has no version 7; it has \[1\]"):
        registry.version("mlp", 7)
    with pytest.raises(ModelNotFoundError, match=r"no model 'x+…' \(500 characters\)"):
        registry.show("x" * 500)  # echoes are bounded
    with pytest.raises(ModelNotFoundError, match="no blob"):
        registry.blob_path("sha256:" + "0" * 64)


@pytest.mark.parametrize("name", ["../evil", "a/b", "..", ".hidden", "", "a..b", "x" * 129, "tab\there", "-x",
                                  "/abs"])
def test_names_that_are_not_plain_directory_names_are_refused(registry: ModelRegistry, tmp_path: Path,
                                                               name: str) -> None:
    with pytest.raises(InvalidInputError, match="is not valid"):
        registry.add(name, staged(tmp_path / "s"))
    assert not list(tmp_path.glob("evil*")) and registry.list() == []


def test_good_names_pass() -> None:
    for name in ("mlp", "digits-small", "resnet50_v1.5", "A1"):
        assert check_model_name(name) == name


@pytest.mark.parametrize("digest", ["sha256:../../index.json", "sha256:" + "A" * 64, "md5:" + "0" * 32])
def test_blob_digests_that_are_not_sha256_are_refused(registry: ModelRegistry, digest: str) -> None:
    with pytest.raises(InvalidInputError, match="not sha256"):
        registry.blob_path(digest)


def test_layouts_other_than_one_version_are_refused(registry: ModelRegistry, tmp_path: Path) -> None:
    two = staged(tmp_path / "two")
    staged(two, version="2")
    with pytest.raises(InvalidInputError, match="one version directory"):
        registry.add("mlp", two)
    no_config = staged(tmp_path / "nc")
    (no_config / "config.toml").unlink()
    with pytest.raises(InvalidInputError, match=r"no config\.toml"):
        registry.add("mlp", no_config)
    linked = staged(tmp_path / "ln")
    (linked / "1" / "weights.bin").symlink_to("/etc/passwd")
    with pytest.raises(InvalidInputError, match="link or a special file"):
        registry.add("mlp", linked)
    big = staged(tmp_path / "big", config="# " + "x" * 70_000)
    with pytest.raises(InvalidInputError, match=r"config\.toml is over 64 KiB"):
        registry.add("mlp", big)
    assert registry.list() == [] and not list(registry.blobs.iterdir())


def test_a_crash_between_the_blobs_and_the_index_leaves_the_old_index(registry: ModelRegistry, tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    registry.add("mlp", staged(tmp_path / "a", b"v1"))
    before = registry.index_file.read_bytes()
    real_replace = os.replace

    def crash_on_the_index(src: str | Path, dst: str | Path) -> None:
        if Path(dst) == registry.index_file:
            raise OSError(28, "No space left on device")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", crash_on_the_index)
    with pytest.raises(OSError, match="No space left"):
        registry.add("mlp", staged(tmp_path / "b", b"v2"))
    monkeypatch.undo()
    assert registry.index_file.read_bytes() == before  # the old index, whole
    assert [p.name for p in registry.directory.iterdir() if p.name.endswith(".tmp")] == []
    assert [v.version for v in registry.show("mlp").versions] == [1]  # in memory too
    reopened = ModelRegistry(registry.directory)
    assert [v.version for v in reopened.show("mlp").versions] == [1]
    assert reopened.add("mlp", staged(tmp_path / "c", b"v2")).version == 2  # the orphaned blob is reused


def test_a_failed_blob_write_leaves_no_temporary_file(registry: ModelRegistry, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    def no_rename(src: str | Path, dst: str | Path) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", no_rename)
    with pytest.raises(OSError):
        registry.add("mlp", staged(tmp_path / "a"))
    monkeypatch.undo()
    assert list(registry.blobs.iterdir()) == [] and not registry.index_file.exists()


def test_it_survives_reopening_and_empties_staging(registry: ModelRegistry, tmp_path: Path) -> None:
    first = registry.add("mlp", staged(tmp_path / "a"), note="kept")
    registry.add("cnn", staged(tmp_path / "b", b"cnn"))
    upload = registry.new_staging()
    (upload / "half-received").write_bytes(b"x")
    reopened = ModelRegistry(registry.directory)
    assert [m.name for m in reopened.list()] == ["cnn", "mlp"] and reopened.version("mlp", 1) == first
    assert list(reopened.staging.iterdir()) == []


def test_identical_files_are_stored_once(registry: ModelRegistry, tmp_path: Path) -> None:
    a = registry.add("mlp", staged(tmp_path / "a", b"same"))
    b = registry.add("mlp", staged(tmp_path / "b", b"same"), note="retagged")
    assert a.files == b.files and len(list(registry.blobs.iterdir())) == 2  # the model file and the config


def test_a_corrupt_index_is_a_config_error_naming_the_file(tmp_path: Path) -> None:
    store = tmp_path / "store"
    ModelRegistry(store)
    (store / "index.json").write_text(json.dumps({"models": {"mlp": {"versions": {"1": {"bogus": 1}}}}}))
    with pytest.raises(RegistryError, match=r"index\.json") as info:
        ModelRegistry(store)
    assert isinstance(info.value, ConfigError)
    (store / "index.json").write_text("{half")
    with pytest.raises(RegistryError, match="cannot be read"):
        ModelRegistry(store)
