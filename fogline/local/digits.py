"""A real cascade for the demo: two digit classifiers trained locally on scikit-learn's bundled digits.

``build_digits_repository(root)`` writes, with no downloads and in about 15 seconds on one core::

    root/digits-small/config.toml + 1/model.onnx   tiny MLP for device nodes (ONNX Runtime), ~96% accurate
    root/digits-large/config.toml + 1/model.pt     larger MLP for the cloud worker (TorchScript), ~99%
    root/digits-split.npz                          x_val, y_val, x_test, y_test
    root/catalog.toml                              the cascade "digits", its threshold chosen on val

Both models take ``input`` FP32 ``[-1, 64]`` (an 8x8 image row by row, pixels scaled to [0, 1]) and
return ``probs`` FP32 ``[-1, 10]`` (softmax probabilities). The 1,797 images are split once,
stratified and seeded, 60/20/20 into train/val/test: the models see only train; val is for choosing
cascade thresholds (the small model's temperature is fitted on it); test is for benchmarks.

Training is seeded and deterministic, so two builds give the same split and the same predictions.
torch and scikit-learn are imported only inside the functions that need them: the device tier
imports this module and must never import torch.

``python -m fogline.digits [ROOT] [--force]`` builds a repository and prints the build time and the
test accuracies of small, large and the cascade.
"""

from __future__ import annotations

import io
import os
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from fogline.core.escalation.calibration import evaluate, threshold_for_rate
from fogline.local.digits_configs import CATALOG, LARGE_CONFIG, SMALL_CONFIG

if TYPE_CHECKING:
    import torch

SMALL = "digits-small"
LARGE = "digits-large"
CASCADE = "digits"
SPLIT_FILE = "digits-split.npz"
CATALOG_FILE = "catalog.toml"
MODEL_FILES = {SMALL: "model.onnx", LARGE: "model.pt"}

SEED = 0
VAL_SHARE = 0.2
TEST_SHARE = 0.2
SMALL_HIDDEN = 12
LARGE_HIDDEN = 256
# One thread: on a small shared CPU, two threads train the large model only ~20% faster when the
# machine is idle but ~3.5x slower when another process is busy (threads spin-waiting on each other).
TRAIN_THREADS = 1
CASCADE_SHARE = 0.3  # share of validation requests the catalog's cascade threshold escalates

OPSET = 17
IR_VERSION = 9  # loadable by every ONNX Runtime since 1.15


@dataclass(frozen=True, eq=False)
class Split:
    """The held-out parts of the digits: inputs FP32 ``[n, 64]`` scaled to [0, 1], labels int64 ``[n]``."""

    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


@dataclass(frozen=True, eq=False)
class Digits:
    """All of the digits, partitioned: the training part and the held-out ``split``."""

    x_train: np.ndarray
    y_train: np.ndarray
    split: Split


# ---------------------------------------------------------------------------------------------- build


def build_digits_repository(root: Path, *, force: bool = False) -> Path:
    """Write ``digits-small``, ``digits-large`` and the split under ``root``; returns ``root``.

    What is already there is kept unless ``force``: every piece is deterministic, so a partial
    repository is completed with exactly what a full build would have written.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    todo = [name for name in (SMALL, LARGE) if force or not _model_exists(root / name)]
    write_split = force or not (root / SPLIT_FILE).is_file()
    if todo or write_split:
        data = split_digits()
        if write_split:
            _save_split(root / SPLIT_FILE, data.split)
        if todo:
            with _torch_settings():
                if SMALL in todo:
                    _build_small(root / SMALL, data)
                if LARGE in todo:
                    _build_large(root / LARGE, data)
    if force or todo or not (root / CATALOG_FILE).is_file():
        _write_atomic(root / CATALOG_FILE, catalog_toml(root))
    return root


def load_split(root: Path) -> Split:
    """The validation and test parts written by ``build_digits_repository(root)``."""
    with np.load(Path(root) / SPLIT_FILE) as arrays:
        return Split(**{key: arrays[key] for key in ("x_val", "y_val", "x_test", "y_test")})


def _model_exists(model_dir: Path) -> bool:
    return (model_dir / "config.toml").is_file() and (model_dir / "1" / MODEL_FILES[model_dir.name]).is_file()


def split_digits() -> Digits:
    """The digits, scaled to [0, 1] and split 60/20/20, stratified by label, with a fixed seed."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    y = digits.target.astype(np.int64)
    rest, test = train_test_split(np.arange(len(y)), test_size=TEST_SHARE, stratify=y, random_state=SEED)
    train, val = train_test_split(rest, test_size=VAL_SHARE / (1 - TEST_SHARE), stratify=y[rest],
                                  random_state=SEED)
    return Digits(x[train], y[train], Split(x[val], y[val], x[test], y[test]))


def _save_split(path: Path, split: Split) -> None:
    buffer = io.BytesIO()
    np.savez(buffer, x_val=split.x_val, y_val=split.y_val, x_test=split.x_test, y_test=split.y_test)
    _write_atomic(path, buffer.getvalue())


def _write_atomic(path: Path, data: bytes | str) -> None:
    """Write through a temporary file and a rename, so a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    raw = data.encode() if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(raw)
        os.chmod(tmp, 0o644)  # mkstemp makes it private; the repository is meant to be read by others
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextmanager
def _torch_settings() -> Iterator[None]:
    """TRAIN_THREADS threads and deterministic kernels while training; the caller's settings come back after."""
    import torch

    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(TRAIN_THREADS)
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(deterministic)
        torch.set_num_threads(threads)


@contextmanager
def _quiet_torchscript() -> Iterator[None]:
    """torch 2.9+ flags torch.jit as deprecated on every call; TorchScript is the worker's artifact format."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*torch\.jit\..* is deprecated", category=DeprecationWarning)
        yield


# ---------------------------------------------------------------------------------------------- training


def _train(model: torch.nn.Module, x: np.ndarray, y: np.ndarray, *, epochs: int, lr: float,
           weight_decay: float, batch_size: int) -> torch.nn.Module:
    """Minibatch AdamW with a one-cycle learning rate, seeded; returns the model in eval mode."""
    import torch

    torch.manual_seed(SEED)  # dropout
    generator = torch.Generator().manual_seed(SEED)  # the order of the examples
    inputs, labels = torch.from_numpy(x), torch.from_numpy(y)
    steps = -(-len(inputs) // batch_size)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=epochs * steps)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(inputs), generator=generator)
        for start in range(0, len(inputs), batch_size):
            batch = order[start:start + batch_size]
            loss = torch.nn.functional.cross_entropy(model(inputs[batch]), labels[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
    return model.eval()


def _logits(model: torch.nn.Module, x: np.ndarray) -> np.ndarray:
    import torch

    with torch.inference_mode():
        out: np.ndarray = model(torch.from_numpy(x)).numpy()
    return out


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    out: np.ndarray = shifted / shifted.sum(axis=1, keepdims=True)
    return out


def _fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The temperature (on a log grid, 0.25 to 4) that minimises the negative log-likelihood."""
    best, best_nll = 1.0, np.inf
    for t in np.exp(np.linspace(np.log(0.25), np.log(4.0), 161)):
        probs = _softmax(logits / t)
        nll = -np.log(probs[np.arange(len(labels)), labels] + 1e-12).mean()
        if nll < best_nll:
            best, best_nll = float(t), nll
    return best


def _accuracy(probs: np.ndarray, labels: np.ndarray) -> float:
    return float((probs.argmax(axis=1) == labels).mean())


def _shifted(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every image moved by -1, 0 and +1 pixel along each axis (9 copies), zero-filled at the edges."""
    padded = np.pad(x.reshape(-1, 8, 8), ((0, 0), (1, 1), (1, 1)))
    copies = [padded[:, 1 + dy:9 + dy, 1 + dx:9 + dx].reshape(-1, 64) for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
    return np.concatenate(copies), np.tile(y, len(copies))


def _build_small(model_dir: Path, data: Digits) -> None:
    """64 -> 12 (ReLU) -> 10, then a temperature fitted on val, exported as ONNX with softmax inside."""
    import torch
    from torch import nn

    torch.manual_seed(SEED)  # the initial weights
    first, last = nn.Linear(64, SMALL_HIDDEN), nn.Linear(SMALL_HIDDEN, 10)
    model = nn.Sequential(first, nn.ReLU(), last)
    _train(model, data.x_train, data.y_train, epochs=100, lr=0.02, weight_decay=0.0, batch_size=64)
    split = data.split
    temperature = _fit_temperature(_logits(model, split.x_val), split.y_val)
    val_probs = _softmax(_logits(model, split.x_val) / temperature)
    test_probs = _softmax(_logits(model, split.x_test) / temperature)
    _write_atomic(model_dir / "1" / "model.onnx", _small_onnx(first, last, temperature))
    _write_atomic(model_dir / "config.toml", SMALL_CONFIG.format(
        hidden=SMALL_HIDDEN, weights=sum(p.numel() for p in model.parameters()),
        accuracy=100 * _accuracy(test_probs, split.y_test), temperature=temperature,
        threshold=threshold_for_rate(val_probs, "max_prob", CASCADE_SHARE).max_prob_below,
        share=100 * CASCADE_SHARE))


def _small_onnx(first: torch.nn.Linear, last: torch.nn.Linear, temperature: float) -> bytes:
    """Gemm, Relu, Gemm, Softmax; the temperature is folded into the last layer's weights."""
    from onnx import TensorProto, checker, helper, numpy_helper

    def init(name: str, tensor: torch.Tensor, scale: float = 1.0) -> TensorProto:
        return numpy_helper.from_array((tensor.detach().numpy() / scale).astype(np.float32), name)

    inits = [init("w1", first.weight), init("b1", first.bias),
             init("w2", last.weight, temperature), init("b2", last.bias, temperature)]
    nodes = [
        helper.make_node("Gemm", ["input", "w1", "b1"], ["hidden"], transB=1),
        helper.make_node("Relu", ["hidden"], ["hidden_relu"]),
        helper.make_node("Gemm", ["hidden_relu", "w2", "b2"], ["logits"], transB=1),
        helper.make_node("Softmax", ["logits"], ["probs"], axis=1),
    ]
    graph = helper.make_graph(
        nodes, SMALL.replace("-", "_"),
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 64])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["batch", 10])],
        inits,
    )
    onnx_model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="fogline")
    onnx_model.ir_version = IR_VERSION
    checker.check_model(onnx_model)
    out: bytes = onnx_model.SerializeToString()
    return out


def _build_large(model_dir: Path, data: Digits) -> None:
    """64 -> 256 -> 256 -> 10 with dropout, trained on 1-pixel shifts of train; TorchScript, softmax inside."""
    import torch
    from torch import nn

    torch.manual_seed(SEED)  # the initial weights
    body = nn.Sequential(
        nn.Linear(64, LARGE_HIDDEN), nn.ReLU(), nn.Dropout(0.2),
        nn.Linear(LARGE_HIDDEN, LARGE_HIDDEN), nn.ReLU(), nn.Dropout(0.2),
        nn.Linear(LARGE_HIDDEN, 10),
    )
    _train(body, *_shifted(data.x_train, data.y_train), epochs=25, lr=3e-3, weight_decay=1e-2, batch_size=128)
    model = nn.Sequential(body, nn.Softmax(dim=1)).eval()
    buffer = io.BytesIO()
    with _quiet_torchscript():
        torch.jit.save(torch.jit.script(model), buffer)
    accuracy = _accuracy(_logits(model, data.split.x_test), data.split.y_test)
    _write_atomic(model_dir / "1" / "model.pt", buffer.getvalue())
    _write_atomic(model_dir / "config.toml", LARGE_CONFIG.format(hidden=LARGE_HIDDEN, accuracy=100 * accuracy))


# ---------------------------------------------------------------------------------------------- evaluation


def small_probabilities(root: Path, x: np.ndarray) -> np.ndarray:
    """``digits-small``'s probabilities for ``x`` (FP32 ``[n, 64]``), through ONNX Runtime on the CPU."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    session = onnxruntime.InferenceSession(str(Path(root) / SMALL / "1" / "model.onnx"), options,
                                           providers=["CPUExecutionProvider"])
    out: np.ndarray = session.run(["probs"], {"input": np.ascontiguousarray(x, dtype=np.float32)})[0]
    return out


def large_probabilities(root: Path, x: np.ndarray) -> np.ndarray:
    """``digits-large``'s probabilities for ``x`` (FP32 ``[n, 64]``), through TorchScript on the CPU."""
    import torch

    with _quiet_torchscript():
        model = torch.jit.load(str(Path(root) / LARGE / "1" / "model.pt"), map_location="cpu").eval()
    with torch.inference_mode():
        out: np.ndarray = model(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))).numpy()
    return out


def catalog_toml(root: Path) -> str:
    """The catalog with the cascade ``digits``: a max-probability threshold that escalates
    CASCADE_SHARE of the validation split (only the small model's outputs are needed)."""
    split = load_split(root)
    rule = threshold_for_rate(small_probabilities(root, split.x_val), "max_prob", CASCADE_SHARE)
    return CATALOG.format(name=CASCADE, small=SMALL, large=LARGE, share=100 * CASCADE_SHARE,
                          threshold=rule.max_prob_below)


# ---------------------------------------------------------------------------------------------- script


def main(argv: list[str] | None = None) -> int:
    """Build a repository (default ``./models``), print the build time and the test accuracies."""
    args = sys.argv[1:] if argv is None else argv
    force = "--force" in args
    paths = [a for a in args if a != "--force"]
    root = Path(paths[0] if paths else "models")
    started = time.perf_counter()
    build_digits_repository(root, force=force)
    print(f"built {root} in {time.perf_counter() - started:.1f}s")
    split = load_split(root)
    small_val = small_probabilities(root, split.x_val)
    small, large = small_probabilities(root, split.x_test), large_probabilities(root, split.x_test)
    print(f"test accuracy: small {_accuracy(small, split.y_test):.4f}, large {_accuracy(large, split.y_test):.4f}")
    for share in (0.1, 0.2, 0.3, 0.4):
        rule = threshold_for_rate(small_val, "max_prob", share)
        result = evaluate(small, large, split.y_test, rule)
        print(f"cascade, threshold {rule.thresholds()['max_prob']:.3f} (escalates {share:.0%} of val): "
              f"escalates {result.escalation_rate:.1%} of test, accuracy {result.accuracy:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
