"""The PyTorch runtime: TorchScript models from a repository, their declared signature, outputs
matched to it, dynamic batching through it, and CUDA when there is one."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from fogline.adapters.runtime.torch import TorchModel, choose_device, memory_usage
from fogline.core.serving.batching import BatchingSettings, DynamicBatcher
from fogline.core.serving.repository import ConfigError, load_model
from fogline.core.tensors import TensorSpec
from tests.torch_models import (
    CLASSIFIER_INPUTS,
    CLASSIFIER_OUTPUTS,
    LABELS_OUTPUTS,
    TWO_HEADS_INPUTS,
    TWO_HEADS_OUTPUTS,
    Classifier,
    DoublesInPlace,
    Labels,
    TwoHeads,
    classifier_repository,
    config_toml,
    save,
)

# NOTE: torch 2.13 deprecates TorchScript in favour of torch.export; TorchScript is what the worker loads today.
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.*` is deprecated:DeprecationWarning")

RNG = np.random.default_rng(0)


def expected(module: torch.nn.Module, *arrays: np.ndarray) -> Any:
    with torch.no_grad():
        return module(*(torch.from_numpy(a.copy()) for a in arrays))


def test_spec_comes_from_config_and_outputs_equal_the_module(tmp_path: Path) -> None:
    model = TorchModel(load_model(classifier_repository(tmp_path) / "classifier"), device="cpu")
    assert model.providers == ["cpu"]
    assert model.spec.platform == "pytorch_libtorch" and model.spec.version == "1"
    assert model.spec.max_batch_size == 16
    assert model.spec.inputs == (TensorSpec("x", "FP32", (-1, 8)),)
    assert model.spec.outputs == (TensorSpec("probs", "FP32", (-1, 3)),)
    x = RNG.standard_normal((5, 8)).astype(np.float32)
    out = model.run({"x": x})
    assert list(out) == ["probs"] and out["probs"].dtype == np.float32
    np.testing.assert_allclose(out["probs"], expected(Classifier(), x).numpy(), rtol=1e-6)


def test_inputs_go_in_declared_order_and_a_tuple_maps_to_declared_outputs(tmp_path: Path) -> None:
    model = TorchModel(load_model(save(tmp_path, "heads", torch.jit.script(TwoHeads()),
                                      config_toml(TWO_HEADS_INPUTS, TWO_HEADS_OUTPUTS))))
    a, b = np.ones((2, 4), np.float32), np.full((2, 4), 3, np.float32)
    out = model.run({"b": b, "a": a})  # the module's arguments follow config.toml, not the dict
    np.testing.assert_array_equal(out["diff"], np.full((2, 4), -2, np.float32))
    assert out["dot"].dtype == np.float64  # cast to the declared FP64
    np.testing.assert_array_equal(out["dot"], np.full((2, 1), 12.0))


def test_a_dict_maps_to_declared_outputs_by_name(tmp_path: Path) -> None:
    model = TorchModel(load_model(save(tmp_path, "labels", torch.jit.script(Labels()),
                                      config_toml(CLASSIFIER_INPUTS, LABELS_OUTPUTS))))
    x = RNG.standard_normal((6, 8)).astype(np.float32)
    out = model.run({"x": x})
    reference = expected(Labels(), x)
    assert list(out) == ["score", "label"] and out["label"].dtype == np.int64
    np.testing.assert_array_equal(out["label"], reference["label"].numpy())
    np.testing.assert_allclose(out["score"], reference["score"].numpy(), rtol=1e-6)


def test_a_module_writing_to_its_input_leaves_the_request_buffer_alone(tmp_path: Path) -> None:
    io = [("x", "FP32", [-1, 8])]
    model = TorchModel(load_model(save(tmp_path, "double", torch.jit.script(DoublesInPlace()), config_toml(io, io))))
    raw = np.arange(8, dtype=np.float32).tobytes()
    x = np.frombuffer(raw, np.float32).reshape(1, 8)  # read-only, like decoded request bytes
    np.testing.assert_array_equal(model.run({"x": x})["x"], 2 * x)
    np.testing.assert_array_equal(x, np.arange(8, dtype=np.float32).reshape(1, 8))


async def test_concurrent_requests_run_as_one_batch_and_split_back(tmp_path: Path) -> None:
    model = TorchModel(load_model(classifier_repository(tmp_path) / "classifier"), device="cpu")
    # A long queue delay: the batch runs when it is full, so all four requests are in it.
    batcher = DynamicBatcher("classifier", model.run, BatchingSettings(max_batch_size=7, max_queue_delay_us=60_000_000))
    xs = [RNG.standard_normal((rows, 8)).astype(np.float32) for rows in (1, 2, 3, 1)]
    results = await asyncio.gather(*(batcher.infer({"x": x}) for x in xs))
    assert (batcher.stats.batches, batcher.stats.largest_batch, batcher.stats.rows) == (1, 4, 7)
    for x, result in zip(xs, results, strict=True):
        np.testing.assert_allclose(result["probs"], expected(Classifier(), x).numpy(), rtol=1e-5)


@pytest.mark.parametrize(("inputs", "outputs"), [(None, CLASSIFIER_OUTPUTS), (CLASSIFIER_INPUTS, None)])
def test_a_pytorch_model_without_its_signature_is_a_config_error_naming_the_file(
        tmp_path: Path, inputs: list | None, outputs: list | None) -> None:
    model_dir = save(tmp_path, "classifier", torch.jit.script(Classifier()), config_toml(inputs, outputs))
    with pytest.raises(ConfigError, match=r"platform 'pytorch' needs \[\[inputs\]\] and \[\[outputs\]\]") as info:
        load_model(model_dir)
    assert str(info.value).startswith(f"{model_dir / 'config.toml'}: ")


def test_a_signature_that_does_not_fit_the_module_fails_at_load(tmp_path: Path) -> None:
    outputs = [*TWO_HEADS_OUTPUTS, ("extra", "FP32", [-1])]
    model_dir = save(tmp_path, "heads", torch.jit.script(TwoHeads()), config_toml(TWO_HEADS_INPUTS, outputs))
    with pytest.raises(ConfigError, match=r"model 'heads' .* fails on zeros of its declared input shapes "
                                          r"\[\[1, 4\], \[1, 4\]\]: .*returned 2 outputs .*declares the outputs "
                                          r"\['diff', 'dot', 'extra'\]"):
        TorchModel(load_model(model_dir))


@pytest.mark.parametrize(("module", "inputs", "message"), [
    (Classifier(), TWO_HEADS_INPUTS, r"declares 2 inputs \['a', 'b'\], but forward\(\) of .*model\.pt takes \['x'\] "
                                     r"\(1 required\)"),
    (TwoHeads(), CLASSIFIER_INPUTS, r"declares 1 inputs \['x'\], but forward\(\) of .*model\.pt takes \['a', 'b'\]"),
])
def test_declared_inputs_that_are_not_the_module_s_arguments_are_refused_at_load(
        tmp_path: Path, module: torch.nn.Module, inputs: list, message: str) -> None:
    model_dir = save(tmp_path, "m", torch.jit.script(module), config_toml(inputs, CLASSIFIER_OUTPUTS))
    with pytest.raises(ConfigError, match=message) as info:
        TorchModel(load_model(model_dir), device="cpu")
    assert str(info.value).startswith(f"{model_dir / 'config.toml'}: ")


def test_a_file_that_is_not_torchscript_is_a_config_error(tmp_path: Path) -> None:
    model_dir = classifier_repository(tmp_path) / "classifier"
    (model_dir / "1" / "model.pt").write_bytes(b"not a zip archive")
    with pytest.raises(ConfigError, match=r"model\.pt: not a TorchScript file"):
        TorchModel(load_model(model_dir))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_asking_for_cuda_without_it_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="device 'cuda' requested, but CUDA is not available"):
        choose_device("cuda")


def test_choose_device_rejects_unknown_devices() -> None:
    with pytest.raises(ConfigError, match="unknown torch device 'gpu'"):
        choose_device("gpu")
    assert choose_device("cpu") == torch.device("cpu")


@pytest.mark.gpu
def test_on_cuda_by_default_with_the_same_results(tmp_path: Path) -> None:
    model = TorchModel(load_model(classifier_repository(tmp_path) / "classifier"))
    assert model.device.type == "cuda"
    assert model.providers[0].startswith("cuda:0 (") and torch.cuda.get_device_name(0) in model.providers[0]
    x = RNG.standard_normal((32, 8)).astype(np.float32)
    out = model.run({"x": x})
    assert isinstance(out["probs"], np.ndarray)
    np.testing.assert_allclose(out["probs"], expected(Classifier(), x).numpy(), rtol=1e-4, atol=1e-6)
    memory = memory_usage(model.device)
    assert memory["cuda_allocated_bytes"] > 0 and memory["cuda_max_allocated_bytes"] >= memory["cuda_allocated_bytes"]
