"""The model repository refuses bad configuration with one line naming the file and the key.

Each test builds a small repository in ``tmp_path`` with real (identity) ONNX models.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path

import pytest
from onnx import TensorProto, helper, save

from fogline.adapters.runtime.onnx import OnnxRuntimeModel
from fogline.core.serving.repository import ConfigError, ModelConfig, load_model, load_repository
from fogline.core.tensors import TensorSpec

CONFIG = """\
max_batch_size = 8

[batching]
max_queue_delay_us = 100

[[inputs]]
name = "x"
datatype = "FP32"
shape = [-1, 4]

[[outputs]]
name = "y"
datatype = "FP32"
shape = [-1, 4]
"""

Dims = list[int | str | None]


def write_onnx(path: Path, *, elem_type: int = TensorProto.FLOAT, shape: Dims | None = None) -> Path:
    """An identity model ``x -> y`` of ``elem_type``, shape ``["batch", 4]`` unless given."""
    dims: Dims = ["batch", 4] if shape is None else shape
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "identity",
                              [helper.make_tensor_value_info("x", elem_type, dims)],
                              [helper.make_tensor_value_info("y", elem_type, dims)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    path.parent.mkdir(parents=True, exist_ok=True)
    save(model, str(path))
    return path


def write_model(root: Path, name: str = "m", config: str = CONFIG, version: str = "1", *,
                elem_type: int = TensorProto.FLOAT, shape: Dims | None = None) -> Path:
    """``root/name/config.toml`` and ``root/name/version/model.onnx`` (see :func:`write_onnx`); the model directory."""
    write_onnx(root / name / version / "model.onnx", elem_type=elem_type, shape=shape)
    (root / name / "config.toml").write_text(config)
    return root / name


def config_error(load: Callable[..., object], *args: object) -> str:
    """The message of the ConfigError ``load(*args)`` raises; the test fails unless it is one line."""
    with pytest.raises(ConfigError) as info:
        load(*args)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_a_good_repository_loads_and_its_declaration_fits_the_file(tmp_path: Path) -> None:
    write_model(tmp_path)
    [config] = load_repository(tmp_path)
    assert (config.name, config.version, config.max_batch_size) == ("m", "1", 8)
    assert config.batching.max_queue_delay_us == 100
    assert config.config_file == tmp_path / "m" / "config.toml"
    model = OnnxRuntimeModel(config, providers=["CPUExecutionProvider"])
    assert model.spec.inputs == (TensorSpec("x", "FP32", (-1, 4)),)


# --------------------------------------------------------------------------------------- key types


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ("batching = 5\n", r"batching must be a table \(\[batching\]\), got 5"),
        ("[batching]\nmax_queue_delay_us = '5'\n", r"batching\.max_queue_delay_us must be an integer >= 0, got '5'"),
        ("[batching]\ninstances = 1.5\n", r"batching\.instances must be an integer >= 0, got 1\.5"),
        ("[batching]\nmax_queue_size = 0\n", r"batching\.max_queue_size must be an integer >= 1, got 0"),
        ("max_batch_size = '8'\n", r"max_batch_size must be an integer >= 0, got '8'"),
        ("intra_op_threads = true\n", r"intra_op_threads must be an integer >= 0, got True"),
        ("platform = 5\n", r"platform must be a non-empty string, got 5"),
        ("platform = []\n", r"platform must be a non-empty string, got \[\]"),
        ("platform = 'tensorflow'\n", r"platform 'tensorflow' is not one of \['onnxruntime', 'pytorch'\]"),
        ("name = 5\n", r"name must be a non-empty string, got 5"),
        ("name = ''\n", r"name must be a non-empty string, got ''"),
        ("inputs = 5\n", r"inputs must be an array of tables \(\[\[inputs\]\] with name, datatype and shape\), got 5"),
        ("outputs = [1]\n", r"outputs must be an array of tables"),
        ("[[inputs]]\nname = 'x'\ndatatype = 'FP32'\nshape = '12'\n",
         r"inputs\[0\]\.shape must be a list of integers >= -1 \(-1 = any size\), got '12'"),
        ("[[inputs]]\nname = 'x'\ndatatype = 'FP32'\nshape = [1.5]\n", r"inputs\[0\]\.shape must be a list of integers"),
        ("[[inputs]]\nname = 'x'\ndatatype = 'FP32'\nshape = [true]\n", r"inputs\[0\]\.shape must be a list of integers"),
        ("[[inputs]]\nname = 'x'\ndatatype = 'FP32'\nshape = [-2]\n", r"inputs\[0\]\.shape must be a list of integers"),
        ("[[inputs]]\nname = 'x'\ndatatype = 'FP32'\n", r"inputs\[0\]\.shape is missing"),
        ("[[inputs]]\nname = 'x'\ndatatype = 'FP32'\nshape = [4]\n[[inputs]]\nname = 5\ndatatype = 'FP32'\nshape = [4]\n",
         r"inputs\[1\]\.name must be a non-empty string, got 5"),
        ("[[outputs]]\nname = 'y'\ndatatype = 'FLOAT'\nshape = [4]\n", r"outputs\[0\]\.datatype 'FLOAT' is not one of \['BOOL'"),
        ("[[outputs]]\nname = 'y'\ndatatype = 32\nshape = [4]\n", r"outputs\[0\]\.datatype must be a non-empty string, got 32"),
        ("[[inputs]]\nname = 'x'\ndatatype = 'FP32'\nshape = [4]\n[[inputs]]\nname = 'x'\ndatatype = 'FP32'\nshape = [4]\n",
         r"inputs declares \['x'\] more than once"),
    ],
)
def test_a_key_of_the_wrong_type_names_the_file_and_the_key(tmp_path: Path, config: str, message: str) -> None:
    model_dir = write_model(tmp_path, config=config)
    error = config_error(load_repository, tmp_path)
    assert error.startswith(f"{model_dir / 'config.toml'}: ")
    assert re.search(message, error), error


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"# ok\nname = 'caf\xe9'\n", r"not UTF-8 text, as TOML must be \(byte 0xe9 on line 2\)"),
        (b"max_batch_size = = 1\n", r"not valid TOML: .*\(at line 1, column 18\)"),
        (b"max_batch_size = 1\nmax_batch_size = 2\n", r"not valid TOML: "),
    ],
)
def test_a_config_that_is_not_utf8_toml_names_the_file(tmp_path: Path, content: bytes, message: str) -> None:
    model_dir = write_model(tmp_path)
    (model_dir / "config.toml").write_bytes(content)
    error = config_error(load_model, model_dir)
    assert error.startswith(f"{model_dir / 'config.toml'}: ")
    assert re.search(message, error), error


def test_a_message_from_another_library_is_kept_on_one_line() -> None:
    assert str(ConfigError("m/1/model.onnx: cannot load it:\n  line 1\n  line 2")) == \
        "m/1/model.onnx: cannot load it: line 1 line 2"


# ------------------------------------------------------------------------------ empty repositories


def test_a_repository_without_models_is_refused(tmp_path: Path) -> None:
    assert "has no models" in config_error(load_repository, tmp_path)
    (tmp_path / "notes").mkdir()  # a directory without config.toml is not a model
    (tmp_path / "catalog.toml").write_text("")
    error = config_error(load_repository, tmp_path)
    assert error.startswith(f"model repository {tmp_path} has no models: a model is a directory <model>/ holding")


def test_a_model_that_is_not_in_the_repository_is_refused(tmp_path: Path) -> None:
    write_model(tmp_path, "m")
    assert config_error(load_repository, tmp_path, ["m", "nope"]) == \
        f"model repository {tmp_path} has no model ['nope']; it has ['m']"
    assert config_error(load_repository, tmp_path / "missing") == f"model repository {tmp_path / 'missing'} is not a directory"


def test_naming_a_model_twice_loads_it_once(tmp_path: Path) -> None:
    write_model(tmp_path, "m")
    write_model(tmp_path, "other")
    assert [c.name for c in load_repository(tmp_path, ["m", "m"])] == ["m"]


def test_a_config_toml_that_is_a_directory_is_refused(tmp_path: Path) -> None:
    write_onnx(tmp_path / "m" / "1" / "model.onnx")
    (tmp_path / "m" / "config.toml").mkdir()
    assert config_error(load_repository, tmp_path) == f"{tmp_path / 'm' / 'config.toml'} is a directory, not a file"


# ----------------------------------------------------------------------------------------- versions


@pytest.mark.parametrize("version", ["01", "v1", "0", "1.0", "latest"])
def test_a_version_directory_that_is_not_a_plain_number_is_refused(tmp_path: Path, version: str) -> None:
    model_dir = write_model(tmp_path)
    write_onnx(model_dir / version / "model.onnx")
    assert config_error(load_repository, tmp_path) == \
        f"{model_dir / version}: a version directory is named by a plain number (1, 2, 10), not {version!r}"


def test_the_highest_version_is_served_and_hidden_entries_are_ignored(tmp_path: Path) -> None:
    model_dir = write_model(tmp_path, version="2")
    write_onnx(model_dir / "10" / "model.onnx")
    (model_dir / ".ipynb_checkpoints").mkdir()
    (model_dir / "README.md").write_text("not a version: a file\n")
    assert load_model(model_dir).path == model_dir / "10" / "model.onnx"


def test_a_missing_version_or_model_file_is_refused(tmp_path: Path) -> None:
    model_dir = tmp_path / "m"
    model_dir.mkdir()
    (model_dir / "config.toml").write_text(CONFIG)
    assert "m: no version directory (e.g. " in config_error(load_model, model_dir)
    (model_dir / "1" / "model.onnx").mkdir(parents=True)
    assert config_error(load_model, model_dir) == f"{model_dir / '1' / 'model.onnx'} is not a file"
    (model_dir / "1" / "model.onnx").rmdir()
    assert config_error(load_model, model_dir) == f"{model_dir / '1' / 'model.onnx'} does not exist"


# -------------------------------------------------------------------------------------------- names


def test_two_models_claiming_one_name_are_refused(tmp_path: Path) -> None:
    write_model(tmp_path, "a", 'name = "same"\n' + CONFIG)
    write_model(tmp_path, "b", 'name = "same"\n' + CONFIG)
    assert config_error(load_repository, tmp_path) == (
        f"{tmp_path / 'b' / 'config.toml'}: name 'same' is already the name of the model in "
        f"{tmp_path / 'a' / 'config.toml'}; each model needs a name of its own")


def test_a_name_key_may_not_take_another_directory_s_name(tmp_path: Path) -> None:
    write_model(tmp_path, "mlp")
    write_model(tmp_path, "mlp-v2", 'name = "mlp"\n' + CONFIG)
    assert "name 'mlp' is already the name of the model in" in config_error(load_repository, tmp_path)
    assert [c.name for c in load_repository(tmp_path, ["mlp-v2"])] == ["mlp"]  # alone, it is fine


# ------------------------------------------------------------------------ the declaration vs the file


def onnx_model(config: ModelConfig) -> OnnxRuntimeModel:
    return OnnxRuntimeModel(config, providers=["CPUExecutionProvider"])


def declared(tensor: str, datatype: str, shape: list[int], other_shape: list[int] | None = None) -> str:
    """A config.toml declaring ``tensor`` (x or y) as ``datatype`` and ``shape``, the other FP32 ``other_shape``."""
    other = "y" if tensor == "x" else "x"
    tables = {tensor: (datatype, shape), other: ("FP32", other_shape or [-1, 4])}
    return "max_batch_size = 8\n" + "".join(
        f'[[{table}]]\nname = "{name}"\ndatatype = "{tables[name][0]}"\nshape = {tables[name][1]}\n'
        for table, name in (("inputs", "x"), ("outputs", "y")))


@pytest.mark.parametrize(
    ("tensor", "datatype", "shape", "onnx_shape", "file_side"),
    [
        ("x", "FP64", [-1, 4], None, "FP32 [-1, 4]"),      # the datatype
        ("y", "FP16", [-1, 4], None, "FP32 [-1, 4]"),      # outputs too
        ("x", "FP32", [-1], None, "FP32 [-1, 4]"),         # the rank
        ("x", "FP32", [-1, 4, 1], None, "FP32 [-1, 4]"),
        ("x", "FP32", [-1, 5], None, "FP32 [-1, 4]"),      # a fixed dimension
        ("x", "FP32", [-1, 4], [2, 4], "FP32 [2, 4]"),     # -1 where the file fixes the size
    ],
)
def test_a_declaration_that_contradicts_the_onnx_file_is_refused_at_load(
        tmp_path: Path, tensor: str, datatype: str, shape: list[int], onnx_shape: Dims | None, file_side: str) -> None:
    model_dir = write_model(tmp_path, config=declared(tensor, datatype, shape), shape=onnx_shape)
    config = load_model(model_dir)
    what = "inputs" if tensor == "x" else "outputs"
    assert config_error(onnx_model, config) == (
        f"{model_dir / 'config.toml'}: {what} {tensor!r} is declared {datatype} {shape}, but the model file "
        f"{model_dir / '1' / 'model.onnx'} has {file_side}; declare its datatype, rank and fixed dimensions "
        "(-1 only where the file's dimension is free)")


@pytest.mark.parametrize(("shape", "onnx_shape"), [([-1, 4], ["batch", 4]), ([8, 4], ["batch", 4]),
                                                   ([-1, 4], ["batch", None]), ([2, 4], [2, 4])])
def test_a_declaration_that_fits_the_onnx_file_is_served_as_declared(
        tmp_path: Path, shape: list[int], onnx_shape: Dims) -> None:
    config = declared("x", "FP32", shape, other_shape=shape)
    model = onnx_model(load_model(write_model(tmp_path, config=config, shape=onnx_shape)))
    assert model.spec.inputs == (TensorSpec("x", "FP32", tuple(shape)),)


def test_declared_names_that_are_not_the_file_s_are_refused(tmp_path: Path) -> None:
    model_dir = write_model(tmp_path, config=CONFIG.replace('name = "x"', 'name = "input"'))
    assert config_error(onnx_model, load_model(model_dir)) == (
        f"{model_dir / 'config.toml'}: declares inputs ['input'], the model file "
        f"{model_dir / '1' / 'model.onnx'} has ['x']")


def test_an_onnx_type_the_protocol_cannot_carry_is_a_config_error(tmp_path: Path) -> None:
    model_dir = write_model(tmp_path, config="", elem_type=TensorProto.BFLOAT16)
    error = config_error(onnx_model, load_model(model_dir))
    assert error == (f"{model_dir / '1' / 'model.onnx'}: tensor 'x': ONNX type tensor(bfloat16) is not "
                     "supported by the V2 protocol")


# ------------------------------------------------------------------------------ links out of the root


def test_a_model_directory_linked_from_outside_the_repository_is_refused(tmp_path: Path) -> None:
    root, outside = tmp_path / "models", write_model(tmp_path / "elsewhere")
    root.mkdir()
    (root / "evil").symlink_to(outside, target_is_directory=True)
    assert config_error(load_repository, root) == (
        f"{root / 'evil'} resolves to {outside.resolve()}, outside the model repository {root.resolve()}; "
        "keep model directories and files inside it")


def test_a_link_to_a_directory_without_a_model_outside_is_refused_too(tmp_path: Path) -> None:
    write_model(tmp_path / "models")
    (tmp_path / "etc").mkdir()
    (tmp_path / "models" / "evil").symlink_to(tmp_path / "etc", target_is_directory=True)
    assert "evil resolves to " in config_error(load_repository, tmp_path / "models")


@pytest.mark.parametrize(("link", "named"), [("1/model.onnx", "1/model.onnx"), ("config.toml", "config.toml"),
                                             ("1", "1/model.onnx")])
def test_a_file_or_version_linked_from_outside_the_repository_is_refused(tmp_path: Path, link: str,
                                                                         named: str) -> None:
    root, outside = tmp_path / "models", write_model(tmp_path / "elsewhere")
    model_dir = write_model(root)
    inside = model_dir / link
    if inside.is_dir():
        (inside / "model.onnx").unlink()
        inside.rmdir()
    else:
        inside.unlink()
    inside.symlink_to(outside / link)
    error = config_error(load_repository, root)
    assert error.startswith(f"{model_dir / named} resolves to {(outside / named).resolve()}, outside the model "
                            f"repository {root.resolve()}")


def test_links_that_stay_inside_the_repository_are_followed(tmp_path: Path) -> None:
    root = tmp_path / "models"
    model_dir = write_model(root)
    (root / "alias").symlink_to("m", target_is_directory=True)
    shared = write_onnx(root / "shared" / "identity.onnx")
    (model_dir / "1" / "model.onnx").unlink()
    os.symlink(os.path.relpath(shared, model_dir / "1"), model_dir / "1" / "model.onnx")
    configs = load_repository(root)
    assert [c.name for c in configs] == ["alias", "m"]
    assert onnx_model(configs[1]).spec.outputs == (TensorSpec("y", "FP32", (-1, 4)),)


def test_a_link_loop_is_refused(tmp_path: Path) -> None:
    write_model(tmp_path)
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    write_model(tmp_path, "n")
    (tmp_path / "n" / "1" / "model.onnx").unlink()
    (tmp_path / "n" / "1" / "model.onnx").symlink_to(tmp_path / "n" / "1" / "model.onnx")
    assert "model.onnx: cannot resolve it: " in config_error(load_repository, tmp_path)
