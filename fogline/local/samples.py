"""Sample models built locally (no downloads): a model repository ready for ``fogline up``.

- ``mlp``: FP32 ``[-1, 64]`` -> ``[-1, 10]``, two dense layers; microseconds per row.
- ``cnn``: FP32 ``[-1, 3, 64, 64]`` -> ``[-1, 10]``, five convolutions; a few ms per image on one core.

Weights come from a seeded generator, so every build is byte-identical.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

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


def build_cnn(model_dir: Path, seed: int = 2) -> None:
    """Write the ``cnn`` sample (ONNX and config.toml) under ``model_dir``."""
    from onnx import TensorProto, helper

    rng = np.random.default_rng(seed)
    inits: list[TensorProto] = []
    nodes, prev = [], "input"
    for i, (cin, cout, stride) in enumerate(CNN_CHANNELS):
        inits += [_init(f"c{i}w", rng.normal(0, (2 / (cin * 9)) ** 0.5, (cout, cin, 3, 3))),
                  _init(f"c{i}b", np.zeros(cout))]
        nodes += [
            helper.make_node("Conv", [prev, f"c{i}w", f"c{i}b"], [f"c{i}"], kernel_shape=[3, 3],
                             pads=[1, 1, 1, 1], strides=[stride, stride]),
            helper.make_node("Relu", [f"c{i}"], [f"r{i}"]),
        ]
        prev = f"r{i}"
    width = CNN_CHANNELS[-1][1]
    inits += [_init("fw", rng.normal(0, (1 / width) ** 0.5, (width, 10))), _init("fb", np.zeros(10))]
    nodes += [
        helper.make_node("GlobalAveragePool", [prev], ["pool"]),
        helper.make_node("Flatten", ["pool"], ["flat"]),
        helper.make_node("Gemm", ["flat", "fw", "fb"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes, "cnn",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, 64, 64])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])],
        inits,
    )
    _write(model_dir, graph, CNN_CONFIG)


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
