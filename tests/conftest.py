from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from fogline.samples import build_sample_repository
from tests.processes import ProcessGroup


@pytest.fixture(scope="session")
def sample_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sample model repository (mlp, cnn), built once per test session."""
    return build_sample_repository(tmp_path_factory.mktemp("models"))


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[ProcessGroup]:
    """Real fogline processes for one test; every one is killed at teardown."""
    group = ProcessGroup(tmp_path)
    try:
        yield group
    finally:
        group.stop_all()
