"""Several versions of a model in the data plane: which one serves, which one ran, what NOT_FOUND names,
when an old version is idle; and the repository's versions on disk."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from fogline.core.serving.batching import BatchingSettings, DynamicBatcher, Tensors
from fogline.core.serving.dataplane import LocalDataPlane, ServedModel, version_order, warm_up_feeds
from fogline.core.serving.repository import (
    ConfigError,
    find_model_dir,
    list_models,
    load_model,
    model_versions,
)
from fogline.core.tensors import InferRequest, ModelSpec, TensorSpec
from fogline.errors import ModelNotFoundError
from tests.unit.test_repository import CONFIG, write_model


def spec(version: str, name: str = "m", *, shape: tuple[int, ...] = (-1, 4), datatype: str = "FP32",
         max_batch_size: int = 8) -> ModelSpec:
    return ModelSpec(name=name, version=version, platform="test", inputs=(TensorSpec("x", datatype, shape),),
                     outputs=(TensorSpec("y", "FP32", (-1, 4)),), max_batch_size=max_batch_size)


def served(version: str, run: object = None) -> ServedModel:
    """Version ``version`` of model "m": y = x + version."""
    def plus(feeds: Tensors) -> Tensors:
        return {"y": feeds["x"] + float(version)}

    batcher = DynamicBatcher("m", run or plus, BatchingSettings(max_batch_size=8, inline_max_us=0))  # type: ignore[arg-type]
    return ServedModel(spec(version), batcher, ["test"])


def request(version: str = "") -> InferRequest:
    return InferRequest(model="m", inputs={"x": np.zeros((1, 4), np.float32)}, version=version)


async def test_the_serving_version_answers_unless_a_version_is_named_and_responses_say_which_ran() -> None:
    plane = LocalDataPlane("n1", "device", {"m": served("1")})
    assert plane.add(served("2"), serve=False) is None  # loaded beside, not serving
    assert (await plane.infer(request())).version == "1"
    old = plane.add(served("10"))
    assert old is not None and old.spec.version == "1"
    answers = [await plane.infer(request(v)) for v in ("", "1", "2", "10")]
    assert [a.version for a in answers] == ["10", "1", "2", "10"]
    assert [float(a.outputs["y"][0, 0]) for a in answers] == [10.0, 1.0, 2.0, 10.0]
    assert plane.loaded_versions("m") == ["1", "2", "10"]  # numeric order
    status = plane.status()["m"]
    assert (status["version"], status["serving"], status["versions"]) == ("10", "10", ["1", "2", "10"])


def test_an_unknown_version_is_not_found_naming_the_loaded_versions() -> None:
    plane = LocalDataPlane("n1", "device", {"m": served("1")})
    plane.add(served("2"))
    with pytest.raises(ModelNotFoundError, match=r"model 'm' version '3' is not loaded on n1; loaded: \['1', '2'\]"):
        plane.model("m", "3")
    with pytest.raises(ModelNotFoundError, match=r"model 'x' is not served by n1; it serves \['m'\]"):
        plane.model("x", "1")


def test_the_versions_named_in_not_found_are_bounded() -> None:
    plane = LocalDataPlane("n1", "device", {"m": served("1")})
    for v in range(2, 40):
        plane.add(served(str(v)), serve=False)
    with pytest.raises(ModelNotFoundError) as caught:
        plane.model("m", "x" * 1000)
    message = caught.value.message
    assert "more" in message and len(message) < 600, message


def test_removing_the_serving_version_hands_the_name_to_the_highest_left_and_the_last_takes_the_name() -> None:
    plane = LocalDataPlane("n1", "device", {"m": served("1")})
    plane.add(served("9"), serve=False)
    plane.add(served("10"))
    assert plane.remove("m", "10").spec.version == "10"
    assert plane.model("m").spec.version == "9"
    plane.remove("m", "9")
    plane.remove("m", "1")
    assert "m" not in plane.models and "m" not in plane.versions and not plane.ready()
    with pytest.raises(ModelNotFoundError):
        plane.remove("m", "1")


async def test_an_old_version_is_idle_only_once_its_requests_have_their_answers() -> None:
    release = asyncio.Event()
    started = asyncio.Event()

    async def slow_infer(inputs: Tensors, *, deadline: float | None = None) -> Tensors:
        started.set()
        await release.wait()
        return {"y": inputs["x"]}

    old = served("1")
    old.batcher.infer = slow_infer  # type: ignore[method-assign]
    plane = LocalDataPlane("n1", "device", {"m": old})
    running = asyncio.ensure_future(plane.infer(request()))
    await started.wait()
    assert plane.add(served("2")) is old and old.active == 1
    assert (await plane.infer(request())).version == "2"  # new requests go to the new version at once
    idle = asyncio.ensure_future(old.idle())
    await asyncio.sleep(0)
    assert not idle.done()
    release.set()
    assert (await running).version == "1"  # the request in flight finished on the old version
    await asyncio.wait_for(idle, 5)
    assert old.active == 0


def test_warm_up_feeds_are_zeros_of_one_row_or_none_with_the_reason() -> None:
    feeds, why = warm_up_feeds(spec("1", shape=(-1, 3, 8)))
    assert feeds is not None and why == ""
    assert feeds["x"].shape == (1, 3, 8) and feeds["x"].dtype == np.float32 and not feeds["x"].any()
    assert warm_up_feeds(spec("1", shape=(-1, -1))) == (None, "input 'x' has a free dimension: [-1, -1]")
    assert warm_up_feeds(spec("1", shape=(-1,), max_batch_size=0))[0] is None  # no batch dim: -1 is free
    assert warm_up_feeds(spec("1", shape=(2,), datatype="BYTES")) == (None, "input 'x' is BYTES")


def test_version_order_is_numeric() -> None:
    assert sorted(["10", "2", "1", "b", "a"], key=version_order) == ["1", "2", "10", "a", "b"]


# --- The repository's versions -----------------------------------------------------------------------


def test_a_given_version_loads_and_the_default_stays_the_highest(tmp_path: Path) -> None:
    model_dir = write_model(tmp_path, "m", version="1")
    for version in ("2", "10"):
        write_model(tmp_path, "m", version=version)
    assert model_versions(model_dir) == ["1", "2", "10"]
    assert load_model(model_dir).version == "10"
    config = load_model(model_dir, version="2")
    assert config.version == "2" and config.path == model_dir / "2" / "model.onnx"
    with pytest.raises(ConfigError, match=r"no version '3'; it has \['1', '2', '10'\]"):
        load_model(model_dir, version="3")


def test_models_are_found_by_served_name_and_listed_with_their_versions(tmp_path: Path) -> None:
    write_model(tmp_path, "dir-a", 'name = "alpha"\n' + CONFIG)
    write_model(tmp_path, "b", version="3")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.toml").write_text("not toml [")
    assert find_model_dir(tmp_path, "alpha") == tmp_path / "dir-a"
    assert find_model_dir(tmp_path, "b") == tmp_path / "b"
    with pytest.raises(ConfigError, match=r"has no model 'zeta'; it has \['b', 'broken', 'dir-a'\]"):
        find_model_dir(tmp_path, "zeta")
    assert list_models(tmp_path) == {"alpha": ["1"], "b": ["3"]}  # the broken one left out
