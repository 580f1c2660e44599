"""Model pushes to a real cloud master in this process, over HTTPS with the admin token: the upload
streams to the store, is validated in a real subprocess (ONNX Runtime, torch), and is refused with
its reason, leaving nothing behind, when it is corrupt, inconsistent, too large or unsafe. The
``fogline models`` CLI against the same master."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import os
import ssl
import subprocess
import sys
import tarfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from cloud_master import CloudMaster, CloudSettings
from fogline.adapters.runtime.validate import validate_model
from fogline.adapters.tls.material import TlsFiles, TlsSettings
from fogline.cli import build_parser
from fogline.cli import models as models_cli
from fogline.core.security.identity import Identity
from fogline.errors import InvalidInputError
from tests.adapters.test_http_tls import TinyCA

TOKEN = "model-push-admin-token-0123456789"
MiB = 1024 * 1024
CLOUD = Identity(service="cloud", id="cloud-t")


@dataclass
class Cloud:
    master: CloudMaster
    ssl: ssl.SSLContext
    files: TlsFiles
    token_file: Path
    store: Path

    @property
    def admin(self) -> str:
        return f"https://{self.master.endpoints['admin']}"

    @property
    def status(self) -> str:
        return f"https://{self.master.endpoints['http']}"


@pytest.fixture
async def cloud(tmp_path: Path) -> AsyncIterator[Cloud]:
    """A cloud master over TLS with the admin token, a model store and a 1 MiB push limit."""
    ca = TinyCA()
    files, _ = ca.write(tmp_path / "tls", CLOUD)
    token_file = tmp_path / "admin.token"
    token_file.write_text(TOKEN)
    token_file.chmod(0o600)
    master = CloudMaster(CloudSettings(cloud_id=CLOUD.id, tls=TlsSettings(files=files), admin_token_file=token_file,
                                       model_store=tmp_path / "store", max_model_bytes=MiB))
    await master.start()
    yield Cloud(master, ssl.create_default_context(cadata=ca.pem.decode()), files, token_file, tmp_path / "store")
    await master.drain()


async def request(cloud: Cloud, method: str, url: str, *, token: str | None = TOKEN, **kwargs: Any) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with aiohttp.ClientSession() as http, \
            http.request(method, url, headers=headers, ssl=cloud.ssl, **kwargs) as reply:
        return reply.status, await reply.json(content_type=None)


async def push(cloud: Cloud, name: str, body: Any, **query: str) -> tuple[int, Any]:
    return await request(cloud, "POST", f"{cloud.admin}/v1/admin/models/{name}", params=query, data=body)


def store_contents(cloud: Cloud) -> tuple[bytes | None, list[str], list[str]]:
    """(index, blobs, staging entries) of the store: what a refused push must leave unchanged."""
    index = cloud.store / "index.json"
    return (index.read_bytes() if index.exists() else None, sorted(os.listdir(cloud.store / "blobs" / "sha256")),
            os.listdir(cloud.store / "staging"))


def tar_gz(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def mlp_files(sample_models: Path) -> dict[str, bytes]:
    return {"config.toml": (sample_models / "mlp" / "config.toml").read_bytes(),
            "1/model.onnx": (sample_models / "mlp" / "1" / "model.onnx").read_bytes()}


# --- pushes that are accepted ------------------------------------------------------------------------

async def test_an_onnx_file_is_pushed_listed_and_shown(cloud: Cloud, sample_models: Path) -> None:
    model = (sample_models / "mlp" / "1" / "model.onnx").read_bytes()
    with open(sample_models / "mlp" / "1" / "model.onnx", "rb") as f:  # streamed from the file
        status, record = await push(cloud, "mlp", f, note="first cut")
    digest = "sha256:" + hashlib.sha256(model).hexdigest()
    assert status == 201, record
    assert (record["name"], record["version"], record["platform"], record["note"]) == ("mlp", 1, "onnxruntime",
                                                                                      "first cut")
    assert record["files"] == {"model.onnx": digest} and record["upload_sha256"] == digest
    assert record["signature"]["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 64]}]
    assert (cloud.store / "blobs" / "sha256" / digest.removeprefix("sha256:")).read_bytes() == model

    status, listed = await request(cloud, "GET", f"{cloud.admin}/v1/admin/models")
    assert status == 200 and [(m["name"], m["latest"], m["versions"]) for m in listed] == [("mlp", 1, 1)]
    status, shown = await request(cloud, "GET", f"{cloud.admin}/v1/admin/models/mlp")
    assert status == 200 and shown["versions"][0]["files"] == {"model.onnx": digest}
    # read-only on the status port, without a credential
    assert await request(cloud, "GET", f"{cloud.status}/v1/models", token=None) == (200, listed)
    assert await request(cloud, "GET", f"{cloud.status}/v1/models/mlp", token=None) == (200, shown)
    status, body = await request(cloud, "GET", f"{cloud.status}/v1/models/cnn", token=None)
    assert status == 404 and body == {"error": "no model 'cnn' in the registry; it has ['mlp']", "code": "NOT_FOUND"}


async def test_a_directory_keeps_its_config_and_runs_on_zeros(cloud: Cloud, sample_models: Path) -> None:
    status, record = await push(cloud, "mlp", tar_gz(mlp_files(sample_models)), kind="dir", version="3")
    assert status == 201, record
    assert record["version"] == 3 and "max_batch_size = 64" in record["config_text"]
    assert record["signature"]["ran_on_zeros"] is True and record["signature"]["max_batch_size"] == 64
    loose = {"model/config.toml": mlp_files(sample_models)["config.toml"],
             "model/model.onnx": mlp_files(sample_models)["1/model.onnx"]}  # one top directory, file beside config
    status, record = await push(cloud, "mlp", tar_gz(loose), kind="dir")
    assert (status, record["version"]) == (201, 4)
    status, body = await push(cloud, "mlp", tar_gz(mlp_files(sample_models)), kind="dir", version="3")
    assert status == 400 and "version 3 of mlp exists" in body["error"]


async def test_a_torchscript_directory_is_validated_with_torch(cloud: Cloud, tmp_path: Path) -> None:
    import torch

    from tests.torch_models import CLASSIFIER_INPUTS, CLASSIFIER_OUTPUTS, Classifier, config_toml

    path = tmp_path / "classifier.pt"
    torch.jit.script(Classifier()).save(str(path))
    config = config_toml(CLASSIFIER_INPUTS, CLASSIFIER_OUTPUTS)
    status, record = await push(cloud, "clf", tar_gz({"config.toml": config.encode(), "1/model.pt": path.read_bytes()}),
                                kind="dir")
    assert status == 201, record
    assert record["platform"] == "pytorch" and record["files"].keys() == {"model.pt"}
    wrong = config_toml([("x", "FP32", [-1, 8]), ("y", "FP32", [-1, 8])], CLASSIFIER_OUTPUTS)
    status, body = await push(cloud, "clf", tar_gz({"config.toml": wrong.encode(), "1/model.pt": path.read_bytes()}),
                              kind="dir")
    assert status == 400 and "declares 2 inputs" in body["error"]
    status, body = await push(cloud, "clf", path.read_bytes(), kind="pytorch")
    assert status == 400 and "push a directory with config.toml" in body["error"]


# --- pushes that are refused, leaving nothing behind --------------------------------------------------

async def test_a_corrupt_file_is_refused_naming_the_reason(cloud: Cloud, sample_models: Path) -> None:
    await push(cloud, "mlp", (sample_models / "mlp" / "1" / "model.onnx").read_bytes())
    before = store_contents(cloud)
    status, body = await push(cloud, "mlp", os.urandom(4096))
    assert status == 400 and body["code"] == "INVALID_ARGUMENT"
    assert "ONNX Runtime cannot load it" in body["error"] and str(cloud.store) not in body["error"]
    assert store_contents(cloud) == before


async def test_a_config_contradicting_the_file_is_refused(cloud: Cloud, sample_models: Path) -> None:
    files = mlp_files(sample_models)
    files["config.toml"] = files["config.toml"].replace(b"shape = [-1, 64]", b"shape = [-1, 32]")
    status, body = await push(cloud, "mlp", tar_gz(files), kind="dir")
    assert status == 400 and "is declared FP32 [-1, 32], but the model file" in body["error"]
    assert store_contents(cloud) == (None, [], [])
    files = mlp_files(sample_models)
    files["config.toml"] = b'name = "other"\n' + files["config.toml"]
    status, body = await push(cloud, "mlp", tar_gz(files), kind="dir")
    assert status == 400 and "names the model 'other', but it is pushed as 'mlp'" in body["error"]


async def test_over_the_size_limit_is_413(cloud: Cloud) -> None:
    status, body = await push(cloud, "big", os.urandom(MiB + 1))
    assert (status, body) == (413, {"error": "model over 1 MiB, the cloud master's limit (--max-model-mb)",
                                    "code": "RESOURCE_EXHAUSTED"})

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: counted as it streams
        for _ in range(20):
            yield os.urandom(64 * 1024)

    status, body = await push(cloud, "big", chunks())
    assert status == 413 and body["code"] == "RESOURCE_EXHAUSTED"
    bomb = tar_gz({"config.toml": b'platform = "onnxruntime"\n', "1/model.onnx": bytes(2 * MiB)})  # compresses well
    status, body = await push(cloud, "big", bomb, kind="dir")
    assert status == 413 and "unpacked" in body["error"]
    assert store_contents(cloud) == (None, [], [])


async def test_no_token_is_401_and_a_wrong_one_too(cloud: Cloud) -> None:
    status, body = await request(cloud, "POST", f"{cloud.admin}/v1/admin/models/mlp", token=None, data=b"x")
    assert status == 401 and body["code"] == "UNAUTHENTICATED"
    assert (await request(cloud, "GET", f"{cloud.admin}/v1/admin/models", token="wrong"))[0] == 401


async def test_bad_archives_are_refused(cloud: Cloud, sample_models: Path) -> None:
    whole = tar_gz(mlp_files(sample_models))
    status, body = await push(cloud, "mlp", whole[: len(whole) // 2], kind="dir")
    assert status == 400 and "not a complete tar.gz archive" in body["error"]
    status, body = await push(cloud, "mlp", tar_gz({"../escape": b"x", **mlp_files(sample_models)}), kind="dir")
    assert status == 400 and "without '..'" in body["error"]
    status, body = await push(cloud, "mlp", tar_gz({"/etc/x": b"x"}), kind="dir")
    assert status == 400 and "must be relative" in body["error"]
    status, body = await push(cloud, "mlp", _tar_with_link(), kind="dir")
    assert status == 400 and "a link or a special file" in body["error"]
    status, body = await push(cloud, "mlp", tar_gz({"1/model.onnx": b"x"}), kind="dir")
    assert status == 400 and "no config.toml" in body["error"]
    two = {**mlp_files(sample_models), "2/model.onnx": mlp_files(sample_models)["1/model.onnx"]}
    status, body = await push(cloud, "mlp", tar_gz(two), kind="dir")
    assert status == 400 and "one version directory" in body["error"]
    assert store_contents(cloud) == (None, [], [])
    assert not (cloud.store.parent / "escape").exists()


def _tar_with_link() -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        info = tarfile.TarInfo("config.toml")
        info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(info)
    return buffer.getvalue()


@pytest.mark.parametrize(("path", "query", "reason"), [
    ("/v1/admin/models/-x", {}, "model name '-x' is not valid"),
    ("/v1/admin/models/mlp", {"kind": "zip"}, "kind 'zip' is not one of"),
    ("/v1/admin/models/mlp", {"version": "01"}, "version '01' is not valid"),
    ("/v1/admin/models/mlp", {"note": "x" * 501}, "at most 500 characters"),
])
async def test_bad_queries_are_400(cloud: Cloud, path: str, query: dict[str, str], reason: str) -> None:
    status, body = await request(cloud, "POST", cloud.admin + path, params=query, data=b"x")
    assert status == 400 and reason in body["error"]


async def test_an_empty_upload_is_refused(cloud: Cloud) -> None:
    status, body = await push(cloud, "mlp", b"")
    assert status == 400 and "the upload is empty" in body["error"]


async def test_without_a_store_the_registry_is_unavailable() -> None:
    master = CloudMaster(CloudSettings(cloud_id="no-store"))
    await master.start()
    try:
        async with aiohttp.ClientSession() as http, http.get(f"http://{master.endpoints['http']}/v1/models") as r:
            assert r.status == 503 and "--model-store" in (await r.json())["error"]
    finally:
        await master.drain()


# --- the validation subprocess ----------------------------------------------------------------------

async def test_validation_that_takes_too_long_is_refused(sample_models: Path) -> None:
    with pytest.raises(InvalidInputError, match=r"did not load and run within 0\.01 s"):
        await validate_model(sample_models / "mlp", timeout_s=0.01)


async def test_validation_runs_the_model_in_a_subprocess(sample_models: Path) -> None:
    summary = await validate_model(sample_models / "cnn")
    assert summary.name == "cnn" and summary.ran_on_zeros and summary.inputs[0]["shape"] == [-1, 3, 64, 64]


def test_the_cloud_master_never_imports_torch() -> None:
    code = ("import sys, cloud_master, fogline.servers.models_admin, fogline.adapters.runtime.validate, "
            "fogline.cli.models; assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True, stdin=subprocess.DEVNULL)


async def test_the_registry_survives_a_restart(cloud: Cloud, sample_models: Path, tmp_path: Path) -> None:
    status, _ = await push(cloud, "mlp", (sample_models / "mlp" / "1" / "model.onnx").read_bytes())
    assert status == 201
    again = CloudMaster(CloudSettings(cloud_id="cloud-2", model_store=cloud.store))
    await again.start()
    try:
        async with aiohttp.ClientSession() as http, http.get(f"http://{again.endpoints['http']}/v1/models") as r:
            assert [m["name"] for m in await r.json()] == ["mlp"]
    finally:
        await again.drain()


# --- the CLI ----------------------------------------------------------------------------------------

async def cli(*argv: str) -> int:
    """``fogline models ...`` in a thread (it runs an event loop of its own)."""
    return await asyncio.to_thread(models_cli.run, build_parser().parse_args(["models", *argv]))


async def test_the_cli_pushes_lists_and_shows(cloud: Cloud, sample_models: Path, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    flags = ["--admin", cloud.admin, "--admin-token-file", str(cloud.token_file), "--tls-ca", str(cloud.files.ca)]
    assert await cli("push", "mlp", str(sample_models / "mlp" / "1" / "model.onnx"), "--note", "cli", *flags) == 0
    assert "pushed mlp version 1" in capsys.readouterr().out
    assert await cli("push", "mlp", str(sample_models / "mlp"), "--version", "7", *flags) == 0  # a directory
    assert "pushed mlp version 7" in capsys.readouterr().out
    state = tmp_path / "stack.json"  # the running stack's state file gives the defaults
    state.write_text(json.dumps({"cloud": {"admin": cloud.master.endpoints["admin"]},
                                 "tls": {"ca": str(cloud.files.ca), "admin_token_file": str(cloud.token_file)}}))
    assert await cli("list", "--state", str(state)) == 0
    assert capsys.readouterr().out.startswith("mlp ")
    assert await cli("show", "mlp", "--json", "--state", str(state)) == 0
    assert [v["version"] for v in json.loads(capsys.readouterr().out)["versions"]] == [1, 7]
    assert await cli("show", "mlp", "--state", str(state)) == 0
    assert "input  input FP32 [-1, 64]" in capsys.readouterr().out
    assert TOKEN not in capsys.readouterr().err


async def test_the_cli_says_why_in_one_line(cloud: Cloud, sample_models: Path, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    flags = ["--admin", cloud.admin, "--admin-token-file", str(cloud.token_file), "--tls-ca", str(cloud.files.ca)]
    corrupt = tmp_path / "bad.onnx"
    corrupt.write_bytes(os.urandom(1000))
    assert await cli("push", "mlp", str(corrupt), *flags) == 1
    err = capsys.readouterr().err
    assert err.startswith("fogline models push: INVALID_ARGUMENT: model refused") and err.count("\n") == 1
    assert await cli("show", "nope", *flags) == 1
    assert "NOT_FOUND: no model 'nope'" in capsys.readouterr().err
    assert await cli("push", "mlp", str(tmp_path / "absent.onnx"), *flags) == 2
    torchscript = tmp_path / "m.pt"
    torchscript.write_bytes(b"x")
    assert await cli("push", "mlp", str(torchscript), *flags) == 2
    assert "give --config" in capsys.readouterr().err
    assert await cli("list", "--state", str(tmp_path / "none.json")) == 2
    assert "no --admin given" in capsys.readouterr().err
    wrong = tmp_path / "wrong.token"
    wrong.write_text("not-it")
    assert await cli("list", "--admin", cloud.admin, "--admin-token-file", str(wrong),
                     "--tls-ca", str(cloud.files.ca)) == 1
    assert "UNAUTHENTICATED" in capsys.readouterr().err
    # no --tls-ca: the system's CAs do not trust the fleet's, so the handshake fails
    assert await cli("list", "--admin", cloud.admin, "--admin-token-file", str(cloud.token_file)) == 1
    assert "no answer from the admin API" in capsys.readouterr().err
