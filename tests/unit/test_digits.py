"""The digits cascade: two real classifiers trained locally, a stratified split, and a cascade that pays off."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("sklearn")
pytest.importorskip("onnxruntime")

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from fogline.core.escalation.calibration import evaluate, threshold_for_rate
from fogline.core.escalation.hardness import HardnessRule
from fogline.local import digits
from fogline.local.digits import LARGE, SMALL, SPLIT_FILE, Split

TEST_ROWS = VAL_ROWS = 360  # 20% of the 1,797 digits each


@pytest.fixture(scope="session")
def repo(digits_models: Path) -> Path:
    return digits_models


@pytest.fixture(scope="session")
def second_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An independent second build, to compare with the first."""
    return digits.build_digits_repository(tmp_path_factory.mktemp("digits-again"))


@pytest.fixture(scope="session")
def split(repo: Path) -> Split:
    return digits.load_split(repo)


@pytest.fixture(scope="session")
def small_test(repo: Path, split: Split) -> np.ndarray:
    return digits.small_probabilities(repo, split.x_test)


@pytest.fixture(scope="session")
def large_test(repo: Path, split: Split) -> np.ndarray:
    return digits.large_probabilities(repo, split.x_test)


def accuracy(probs: np.ndarray, labels: np.ndarray) -> float:
    return float((probs.argmax(axis=1) == labels).mean())


def test_the_repository_has_both_models_their_configs_and_the_split(repo: Path) -> None:
    assert (repo / SMALL / "1" / "model.onnx").is_file()
    assert (repo / LARGE / "1" / "model.pt").is_file()
    assert (repo / SPLIT_FILE).is_file()
    small = tomllib.loads((repo / SMALL / "config.toml").read_text())
    large = tomllib.loads((repo / LARGE / "config.toml").read_text())
    assert (small["platform"], small["max_batch_size"]) == ("onnxruntime", 64)
    assert (large["platform"], large["max_batch_size"]) == ("pytorch", 256)
    for config in (small, large):
        assert config["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 64]}]
        assert config["outputs"] == [{"name": "probs", "datatype": "FP32", "shape": [-1, 10]}]


def test_the_small_config_loads_through_the_model_repository(repo: Path) -> None:
    from fogline.core.serving.repository import load_model

    config = load_model(repo / SMALL)
    assert (config.platform, config.version, config.max_batch_size) == ("onnxruntime", "1", 64)
    assert config.path == repo / SMALL / "1" / "model.onnx"
    assert config.inputs is not None and config.inputs[0].shape == (-1, 64)


def test_the_small_model_is_onnx_ir9_opset17_with_input_and_probs(repo: Path, split: Split) -> None:
    import onnx
    import onnxruntime

    model = onnx.load(str(repo / SMALL / "1" / "model.onnx"))
    assert model.ir_version == 9
    assert [(o.domain, o.version) for o in model.opset_import] == [("", 17)]
    session = onnxruntime.InferenceSession(str(repo / SMALL / "1" / "model.onnx"),
                                           providers=["CPUExecutionProvider"])
    [inp], [out] = session.get_inputs(), session.get_outputs()
    assert (inp.name, inp.type, inp.shape[1]) == ("input", "tensor(float)", 64)
    assert (out.name, out.type, out.shape[1]) == ("probs", "tensor(float)", 10)
    for rows in (1, 64):
        [probs] = session.run(["probs"], {"input": split.x_test[:rows]})
        assert probs.shape == (rows, 10) and probs.dtype == np.float32


@pytest.mark.filterwarnings(r"ignore:`torch\.jit\.load` is deprecated:DeprecationWarning")
def test_the_large_model_is_torchscript_taking_any_batch(repo: Path, split: Split) -> None:
    import torch

    model = torch.jit.load(str(repo / LARGE / "1" / "model.pt"), map_location="cpu")
    assert isinstance(model, torch.jit.ScriptModule)
    model.eval()
    with torch.inference_mode():
        for rows in (1, 256):
            probs = model(torch.from_numpy(np.resize(split.x_test, (rows, 64))))
            assert tuple(probs.shape) == (rows, 10) and probs.dtype == torch.float32


def test_both_models_output_probabilities(small_test: np.ndarray, large_test: np.ndarray) -> None:
    for probs in (small_test, large_test):
        assert probs.shape == (TEST_ROWS, 10)
        assert np.all(probs >= 0) and np.all(probs <= 1)
        np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-4)


def test_large_is_accurate_and_small_is_good_but_clearly_worse(
        split: Split, small_test: np.ndarray, large_test: np.ndarray) -> None:
    small, large = accuracy(small_test, split.y_test), accuracy(large_test, split.y_test)
    print(f"\ntest accuracy: small {small:.4f}, large {large:.4f}")
    assert large >= 0.975
    assert 0.90 <= small < large
    assert large - small >= 0.01  # at least 4 of the 360 test images


def test_small_is_confident_on_most_inputs(repo: Path, split: Split) -> None:
    confidence = digits.small_probabilities(repo, split.x_val).max(axis=1)
    assert (confidence >= 0.9).mean() >= 0.7


def test_the_split_is_a_stratified_partition_of_the_digits(split: Split) -> None:
    from sklearn.datasets import load_digits

    full = load_digits()
    x_all, y_all = (full.data / 16).astype(np.float32), full.target.astype(np.int64)
    parts = digits.split_digits()
    assert len(split.y_val) == VAL_ROWS and len(split.y_test) == TEST_ROWS
    for x, y in ((split.x_val, split.y_val), (split.x_test, split.y_test)):
        assert x.dtype == np.float32 and x.shape == (len(y), 64) and y.dtype == np.int64
        assert x.min() >= 0 and x.max() <= 1
        # stratified: every digit has its share (20%) of the rows, give or take one
        counts, totals = np.bincount(y, minlength=10), np.bincount(y_all, minlength=10)
        assert np.all(np.abs(counts - 0.2 * totals) <= 1), counts

    def rows(x: np.ndarray, y: np.ndarray) -> list[bytes]:
        return sorted(xi.tobytes() + yi.tobytes() for xi, yi in zip(x, y, strict=True))

    # train + val + test is the data set, every image exactly once: disjoint and complete
    together = (np.concatenate([parts.x_train, split.x_val, split.x_test]),
                np.concatenate([parts.y_train, split.y_val, split.y_test]))
    assert rows(*together) == rows(x_all, y_all)
    assert len(parts.y_train) == len(y_all) - VAL_ROWS - TEST_ROWS


def test_two_builds_give_the_same_split_and_predictions(
        repo: Path, second_repo: Path, split: Split, small_test: np.ndarray, large_test: np.ndarray) -> None:
    again = digits.load_split(second_repo)
    for name in ("x_val", "y_val", "x_test", "y_test"):
        np.testing.assert_array_equal(getattr(again, name), getattr(split, name))
    np.testing.assert_array_equal(digits.small_probabilities(second_repo, split.x_test), small_test)
    np.testing.assert_array_equal(digits.large_probabilities(second_repo, split.x_test), large_test)
    assert (second_repo / SMALL / "1" / "model.onnx").read_bytes() == (repo / SMALL / "1" / "model.onnx").read_bytes()


def test_a_build_keeps_what_exists_and_completes_what_is_missing(
        second_repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model_files = [second_repo / SMALL / "1" / "model.onnx", second_repo / LARGE / "1" / "model.pt"]
    before = [p.stat().st_mtime_ns for p in model_files]
    split_bytes = (second_repo / SPLIT_FILE).read_bytes()
    built: list[str] = []
    monkeypatch.setattr(digits, "_build_small", lambda model_dir, data: built.append(model_dir.name))
    monkeypatch.setattr(digits, "_build_large", lambda model_dir, data: built.append(model_dir.name))

    (second_repo / SPLIT_FILE).unlink()
    assert digits.build_digits_repository(second_repo) == second_repo
    assert built == []
    assert (second_repo / SPLIT_FILE).read_bytes() == split_bytes
    assert [p.stat().st_mtime_ns for p in model_files] == before

    (second_repo / LARGE / "config.toml").rename(second_repo / LARGE / "config.toml.bak")
    try:
        digits.build_digits_repository(second_repo)
        assert built == [LARGE]
    finally:
        (second_repo / LARGE / "config.toml.bak").rename(second_repo / LARGE / "config.toml")

    built.clear()
    digits.build_digits_repository(second_repo, force=True)
    assert built == [SMALL, LARGE]


def test_escalating_the_least_confident_30_percent_matches_the_large_model(
        repo: Path, split: Split, small_test: np.ndarray, large_test: np.ndarray) -> None:
    labels = split.y_test
    large = accuracy(large_test, labels)
    # the 30% of test inputs the small model is least sure of
    threshold = float(np.sort(small_test.max(axis=1))[int(0.3 * len(labels))])
    by_rank = evaluate(small_test, large_test, labels, HardnessRule(max_prob_below=threshold))
    # a threshold chosen on the validation split, as an operator would
    val_rule = threshold_for_rate(digits.small_probabilities(repo, split.x_val), "max_prob", 0.3)
    by_val = evaluate(small_test, large_test, labels, val_rule)
    print(f"\nsmall {accuracy(small_test, labels):.4f}, large {large:.4f}, "
          f"cascade (30% least confident) {by_rank.accuracy:.4f} escalating {by_rank.escalation_rate:.3f}, "
          f"cascade (threshold {val_rule.thresholds()['max_prob']:.3f} from val) {by_val.accuracy:.4f} "
          f"escalating {by_val.escalation_rate:.3f}")
    assert by_rank.escalation_rate == pytest.approx(0.3, abs=0.01)
    assert by_rank.accuracy >= large - 0.005
    assert 0.2 <= by_val.escalation_rate <= 0.35
    assert by_val.accuracy >= large - 0.005
    assert by_val.accuracy > accuracy(small_test, labels)


def test_the_cascade_helpers() -> None:
    small = np.array([[0.9, 0.1], [0.6, 0.4], [0.2, 0.8], [0.45, 0.55]], dtype=np.float32)
    large = np.array([[0.1, 0.9], [0.1, 0.9], [0.9, 0.1], [0.1, 0.9]], dtype=np.float32)
    labels = np.array([0, 1, 1, 1])
    result = evaluate(small, large, labels, HardnessRule(max_prob_below=0.7))  # escalates rows 1 and 3
    assert (result.escalation_rate, result.accuracy) == (0.5, 1.0)
    assert evaluate(small, large, labels, HardnessRule(max_prob_below=0.0)).accuracy == 0.75
    # NOTE: the core does not interpolate as np.quantile did (0.7, between 0.6 and 0.8): its threshold
    # is the lowest max probability left on the device, 0.8. Both escalate the same half, rows 1 and 3.
    half = threshold_for_rate(small, "max_prob", 0.5)
    assert half.max_prob_below == pytest.approx(0.8)
    assert evaluate(small, large, labels, half) == result


def test_importing_the_module_imports_neither_torch_nor_sklearn() -> None:
    code = "import sys, fogline.digits; sys.exit('torch' in sys.modules or 'sklearn' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def test_the_catalog_holds_the_digits_cascade_that_meets_the_goal_on_the_test_split(
        repo: Path, split: Split, small_test: np.ndarray, large_test: np.ndarray) -> None:
    from fogline.core.escalation.catalog import Placement, load_catalog

    entry = load_catalog(repo / digits.CATALOG_FILE).entries["digits"]
    assert (entry.placement, entry.device_model, entry.cloud_model, entry.output) == (
        Placement.CASCADE, SMALL, LARGE, "probs")
    assert entry.rule is not None
    result = evaluate(small_test, large_test, split.y_test, entry.rule)
    assert result.escalation_rate <= 0.30
    assert result.accuracy >= result.cloud_accuracy - 0.005
