"""ModelSpec checks and the model repository's configuration errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fogline.core.serving.repository import ConfigError, load_model, load_repository
from fogline.core.tensors import ModelSpec, TensorSpec
from fogline.errors import ErrorCode, InvalidInputError

SPEC = ModelSpec(name="mlp", version="1", platform="onnxruntime_onnx",
                 inputs=(TensorSpec("input", "FP32", (-1, 64)),), outputs=(TensorSpec("logits", "FP32", (-1, 10)),),
                 max_batch_size=8)


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        ({"input": np.zeros((1, 63), np.float32)}, r"input 'input' of model 'mlp' expects shape \[-1, 64\] \(-1 = any size\), got \[1, 63\]"),
        ({"input": np.zeros((1, 64), np.float64)}, r"input 'input' of model 'mlp' expects datatype FP32, got FP64"),
        ({"input": np.zeros(64, np.float32)}, r"expects shape \[-1, 64\] \(-1 = any size\), got \[64\]"),
        ({"input": np.zeros((9, 64), np.float32)}, r"batch size 9, over the model's max_batch_size 8; split the request"),
        ({}, r"model 'mlp' takes inputs \['input'\]; missing \['input'\], unknown \[\]"),
        ({"input": np.zeros((1, 64), np.float32), "extra": np.zeros(1)}, r"unknown \['extra'\]"),
    ],
)
def test_inputs_that_do_not_fit_the_spec_say_what_was_expected(inputs: dict, message: str) -> None:
    with pytest.raises(InvalidInputError, match=message) as info:
        SPEC.check_inputs(inputs)
    assert info.value.code is ErrorCode.INVALID_ARGUMENT


def test_inputs_that_fit_pass_and_unknown_outputs_are_named() -> None:
    SPEC.check_inputs({"input": np.zeros((8, 64), np.float32)})
    SPEC.check_outputs(("logits",))
    with pytest.raises(InvalidInputError, match=r"model 'mlp' has no output 'probs'; its outputs are \['logits'\]"):
        SPEC.check_outputs(("probs",))


def test_the_sample_repository_loads_its_latest_versions(sample_models: Path) -> None:
    configs = {c.name: c for c in load_repository(sample_models)}
    assert set(configs) == {"mlp", "cnn"}
    assert configs["mlp"].batching.max_batch_size == 64 and configs["mlp"].intra_op_threads == 1
    assert configs["cnn"].inputs[0].shape == (-1, 3, 64, 64)


def test_configuration_errors_name_the_file_and_the_fix(tmp_path: Path) -> None:
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.toml").write_text("max_batch_size = 'big'\n")
    (tmp_path / "m" / "1").mkdir()
    (tmp_path / "m" / "1" / "model.onnx").write_bytes(b"")
    with pytest.raises(ConfigError, match=r"config.toml: max_batch_size must be an integer >= 0, got 'big'"):
        load_model(tmp_path / "m")
    (tmp_path / "m" / "config.toml").write_text("platform = 'tensorflow'\n")
    with pytest.raises(ConfigError, match="platform 'tensorflow' is not one of"):
        load_model(tmp_path / "m")
    with pytest.raises(ConfigError, match=r"has no model \['nope'\]; it has \['m'\]"):
        load_repository(tmp_path, ["nope"])
    with pytest.raises(ConfigError, match="is not a directory"):
        load_repository(tmp_path / "missing")
