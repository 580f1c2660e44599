"""Sample models built locally (no downloads): a model repository ready for ``fogline up``.

- ``mlp``: FP32 ``[-1, 64]`` -> ``[-1, 10]``, two dense layers; microseconds per row.
- ``cnn``: FP32 ``[-1, 3, 64, 64]`` -> ``[-1, 10]``, five convolutions; a few ms per image on one core.

Weights come from a seeded generator, so every build is byte-identical.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from onnx import GraphProto, TensorProto

OPSET = 17
IR_VERSION = 9  # loadable by every ONNX Runtime since 1.15

CNN_CHANNELS = ((3, 32, 1), (32, 64, 2), (64, 128, 2), (128, 128, 1), (128, 256, 2))


def _write(model_dir: Path, graph: GraphProto, config: str) -> None:
    from onnx import checker, helper, save

    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="fogline")
    model.ir_version = IR_VERSION
    checker.check_model(model)
    (model_dir / "1").mkdir(parents=True, exist_ok=True)
    save(model, str(model_dir / "1" / "model.onnx"))
    (model_dir / "config.toml").write_text(config)


def _init(name: str, array: np.ndarray) -> TensorProto:
    from onnx import numpy_helper

    return numpy_helper.from_array(array.astype(np.float32), name)


def build_mlp(model_dir: Path, seed: int = 1) -> None:
    """Write the ``mlp`` sample (ONNX and config.toml) under ``model_dir``."""
    from onnx import TensorProto, helper

    rng = np.random.default_rng(seed)
    inits = [
        _init("w1", rng.normal(0, 0.125, (64, 128))), _init("b1", np.zeros(128)),
        _init("w2", rng.normal(0, 0.09, (128, 10))), _init("b2", np.zeros(10)),
    ]
    nodes = [
        helper.make_node("Gemm", ["input", "w1", "b1"], ["h"]),
        helper.make_node("Relu", ["h"], ["hr"]),
        helper.make_node("Gemm", ["hr", "w2", "b2"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes, "mlp",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 64])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])],
        inits,
    )
    _write(model_dir, graph, MLP_CONFIG)


def build_cnn(model_dir: Path, seed: int = 2, *, slowdown: int = 1, fail_above: float | None = None,
              logit_scale: float = 1.0) -> None:
    """Write the ``cnn`` sample (ONNX and config.toml) under ``model_dir``.

    Two faulty variants, to try a rollout's gates on (same signature, same answers when they answer):
    ``slowdown`` runs the convolutions that many times (the extra runs add zero to the answer), and
    ``fail_above`` makes the model fail (an out-of-range Gather: INTERNAL) on every image whose mean
    pixel exceeds it (about half of random normal images for 0.0; zeros pass, so validation does).
    ``logit_scale`` scales the answers (another file and other numbers, the same argmax: a "retrained"
    version that agrees with the original)."""
    from onnx import TensorProto, helper

    rng = np.random.default_rng(seed)
    inits: list[TensorProto] = []
    for i, (cin, cout, _) in enumerate(CNN_CHANNELS):
        inits += [_init(f"c{i}w", rng.normal(0, (2 / (cin * 9)) ** 0.5, (cout, cin, 3, 3))),
                  _init(f"c{i}b", np.zeros(cout))]
    width = CNN_CHANNELS[-1][1]
    inits += [_init("fw", logit_scale * rng.normal(0, (1 / width) ** 0.5, (width, 10))), _init("fb", np.zeros(10))]
    nodes = _cnn_stack("", "logits")
    extra = [f"logits_x{k}" for k in range(1, slowdown)]
    for k, out in enumerate(extra, start=1):
        # NOTE: each extra run reads its own scaled copy of the input, or ONNX Runtime merges them all.
        inits.append(_init(f"scale_x{k}", np.array([1.0 + k * 1e-3])))
        nodes.append(helper.make_node("Mul", ["input", f"scale_x{k}"], [f"input_x{k}"]))
        nodes += _cnn_stack(f"_x{k}", out, source=f"input_x{k}")
    final = "logits"
    if extra:
        inits.append(_init("zero", np.zeros(1)))
        nodes += [helper.make_node("Sum", extra, ["extra"]), helper.make_node("Mul", ["extra", "zero"], ["nothing"]),
                  helper.make_node("Add", ["logits", "nothing"], ["slow"])]
        final = "slow"
    if fail_above is not None:
        from onnx import numpy_helper

        inits += [_init("threshold", np.array([fail_above])), _init("pad", np.zeros(1)),
                  numpy_helper.from_array(np.array([1000], np.int64), "far"),
                  numpy_helper.from_array(np.array([1], np.int64), "axis1")]
        nodes += [helper.make_node("ReduceMean", ["input"], ["mean"], axes=[1, 2, 3], keepdims=0),
                  helper.make_node("Greater", ["mean", "threshold"], ["bad"]),
                  helper.make_node("Cast", ["bad"], ["bad_i"], to=TensorProto.INT64),
                  helper.make_node("Mul", ["bad_i", "far"], ["index"]),
                  helper.make_node("Gather", ["pad", "index"], ["gathered"], axis=0),
                  helper.make_node("Unsqueeze", ["gathered", "axis1"], ["column"]),
                  helper.make_node("Add", [final, "column"], ["checked"])]
        final = "checked"
    if final != "logits":
        nodes.append(helper.make_node("Identity", [final], ["output_logits"]))
        nodes = [_rename_output(n, "logits", "logits_0") for n in nodes]
        nodes = [_rename_output(n, "output_logits", "logits") for n in nodes]
    graph = helper.make_graph(
        nodes, "cnn",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, 64, 64])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])],
        inits,
    )
    _write(model_dir, graph, CNN_CONFIG)


def _cnn_stack(suffix: str, output: str, source: str = "input") -> list[Any]:
    """The convolutions, pooling and dense layer of ``cnn`` on ``source`` (shared weights), into ``output``."""
    from onnx import helper

    nodes, prev = [], source
    for i, (_, _, stride) in enumerate(CNN_CHANNELS):
        nodes += [
            helper.make_node("Conv", [prev, f"c{i}w", f"c{i}b"], [f"c{i}{suffix}"], kernel_shape=[3, 3],
                             pads=[1, 1, 1, 1], strides=[stride, stride]),
            helper.make_node("Relu", [f"c{i}{suffix}"], [f"r{i}{suffix}"]),
        ]
        prev = f"r{i}{suffix}"
    nodes += [
        helper.make_node("GlobalAveragePool", [prev], [f"pool{suffix}"]),
        helper.make_node("Flatten", [f"pool{suffix}"], [f"flat{suffix}"]),
        helper.make_node("Gemm", [f"flat{suffix}", "fw", "fb"], [output]),
    ]
    return nodes


def _rename_output(node: Any, old: str, new: str) -> Any:
    """``node`` with the tensor ``old`` renamed ``new`` wherever it reads or writes it."""
    for names in (node.input, node.output):
        for i, name in enumerate(names):
            if name == old:
                names[i] = new
    return node


MLP_CONFIG = """\
# Two dense layers; tiny, so one thread per run and no queue delay.
platform = "onnxruntime"
max_batch_size = 64
intra_op_threads = 1

[batching]
max_queue_delay_us = 0
max_queue_size = 512

[[inputs]]
name = "input"
datatype = "FP32"
shape = [-1, 64]

[[outputs]]
name = "logits"
datatype = "FP32"
shape = [-1, 10]
"""

CNN_CONFIG = """\
# Five 3x3 convolutions over a 64x64 RGB image. Convolutions parallelise poorly across ONNX
# Runtime's threads on a small, shared CPU, so each run is single-threaded and one instance runs
# per core: concurrent batches, not threads within a batch, use the cores.
platform = "onnxruntime"
max_batch_size = 32
intra_op_threads = 1

[batching]
max_queue_delay_us = 0
max_queue_size = 256
instances = 0

[[inputs]]
name = "input"
datatype = "FP32"
shape = [-1, 3, 64, 64]

[[outputs]]
name = "logits"
datatype = "FP32"
shape = [-1, 10]
"""

BUILDERS = {"mlp": build_mlp, "cnn": build_cnn}


def build_sample_repository(root: Path, *, force: bool = False) -> Path:
    """Build every sample model under ``root`` that is not there yet; returns ``root``."""
    root = Path(root)
    for name, build in BUILDERS.items():
        if force or not (root / name / "config.toml").is_file():
            build(root / name)
    return root
