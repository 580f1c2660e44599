from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from fogline.local.samples import build_sample_repository
from tests.processes import ProcessGroup


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip the tests marked ``gpu`` unless torch sees CUDA."""
    gpu_tests = [item for item in items if item.get_closest_marker("gpu")]
    if not gpu_tests:
        return
    try:
        import torch  # NOTE: only here: most runs collect no gpu test and never pay for importing torch
    except ImportError:
        reason = "needs CUDA; torch is not installed"
    else:
        if torch.cuda.is_available():
            return
        reason = f"needs CUDA; torch {torch.__version__} sees no GPU"
    for item in gpu_tests:
        item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(scope="session")
def sample_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sample model repository (mlp, cnn), built once per test session."""
    return build_sample_repository(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="session")
def digits_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The digits cascade repository (digits-small, digits-large, split, catalog.toml), trained once per
    session (about 15 s) in a subprocess, as ``fogline up`` does."""
    root = tmp_path_factory.mktemp("digits")
    subprocess.run([sys.executable, "-m", "fogline.digits", str(root)], check=True, capture_output=True,
                   stdin=subprocess.DEVNULL)
    return root


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[ProcessGroup]:
    """Real fogline processes for one test; every one is killed at teardown."""
    group = ProcessGroup(tmp_path)
    try:
        yield group
    finally:
        group.stop_all()
