"""``fogline device`` as a real process on a bad model repository: one line on stderr naming the
file, exit code 2, no traceback. On a good repository the same command serves."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime
import pytest

from fogline.local.samples import MLP_CONFIG, build_mlp
from fogline.sdk.client import SyncClient
from tests.processes import ProcessGroup

pytestmark = pytest.mark.integration


def wrong_type(root: Path) -> Path:
    build_mlp(root / "mlp")
    (root / "mlp" / "config.toml").write_text("batching = 5\n")
    return root / "mlp" / "config.toml"


def not_utf8(root: Path) -> Path:
    build_mlp(root / "mlp")
    (root / "mlp" / "config.toml").write_bytes(b"name = 'caf\xe9'\n")
    return root / "mlp" / "config.toml"


def version_v1(root: Path) -> Path:
    build_mlp(root / "mlp")
    (root / "mlp" / "1").rename(root / "mlp" / "v1")
    return root / "mlp" / "v1"


def same_name(root: Path) -> Path:
    for name in ("a", "b"):
        build_mlp(root / name)
        (root / name / "config.toml").write_text('name = "mlp"\n' + MLP_CONFIG)
    return root / "b" / "config.toml"


def fp64_declared(root: Path) -> Path:
    build_mlp(root / "mlp")
    (root / "mlp" / "config.toml").write_text(MLP_CONFIG.replace('datatype = "FP32"', 'datatype = "FP64"', 1))
    return root / "mlp" / "config.toml"


def linked_from_outside(root: Path) -> Path:
    build_mlp(root.parent / "outside" / "mlp")
    root.mkdir(parents=True)
    (root / "evil").symlink_to(root.parent / "outside" / "mlp", target_is_directory=True)
    return root / "evil"


def empty(root: Path) -> Path:
    root.mkdir(parents=True)
    return root


@pytest.mark.parametrize(("make", "gist"), [
    (wrong_type, ": batching must be a table ([batching]), got 5"),
    (not_utf8, ": not UTF-8 text"),
    (version_v1, ": a version directory is named by a plain number"),
    (same_name, ": name 'mlp' is already the name of the model in"),
    (fp64_declared, ": inputs 'input' is declared FP64 [-1, 64], but the model file"),
    (linked_from_outside, " resolves to "),
    (empty, " has no models: a model is a directory"),
])
def test_a_bad_repository_stops_the_device_with_one_line_naming_the_file(
        tmp_path: Path, make: Callable[[Path], Path], gist: str) -> None:
    root = tmp_path / "models"
    named = make(root)
    result = subprocess.run(
        [sys.executable, "-m", "fogline", "device", "--models", str(root), "--id", "d", "--region", "r"],
        capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert result.stderr.startswith("fogline device: "), result.stderr
    assert f"{named}{gist}" in result.stderr, result.stderr


def test_a_good_repository_serves(processes: ProcessGroup, tmp_path: Path) -> None:
    build_mlp(tmp_path / "models" / "mlp")
    device = processes.device("d", tmp_path / "models", None, "r")
    x = np.random.default_rng(0).standard_normal((2, 64)).astype(np.float32)
    with SyncClient(device.grpc, timeout_s=10) as client:
        result = client.infer("mlp", {"input": x})
    session = onnxruntime.InferenceSession(str(tmp_path / "models" / "mlp" / "1" / "model.onnx"),
                                           providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(result.outputs["logits"], session.run(None, {"input": x})[0], rtol=1e-5)
    assert (result.tier, result.node) == ("device", "d")
