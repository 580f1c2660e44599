from __future__ import annotations

from pathlib import Path

import pytest

from tests.integration.loadgen import Reference


@pytest.fixture(scope="session")
def reference(sample_models: Path) -> Reference:
    """The sample models run by ONNX Runtime in the test process."""
    return Reference(sample_models)
