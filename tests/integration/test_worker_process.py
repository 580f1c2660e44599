"""``fogline worker`` as a real process: a TorchScript model over V2, its status, and a clean stop."""

from __future__ import annotations

import signal
from pathlib import Path

import numpy as np
import pytest
import torch

from fogline.sdk.client import SyncClient
from tests.processes import ProcessGroup, get_json
from tests.torch_models import Classifier, classifier_repository

pytestmark = [pytest.mark.integration,
              pytest.mark.filterwarnings("ignore:`torch.jit.*` is deprecated:DeprecationWarning")]


def test_fogline_worker_serves_a_torchscript_model_and_drains_on_sigterm(processes: ProcessGroup,
                                                                         tmp_path: Path) -> None:
    worker = processes.worker("w1", classifier_repository(tmp_path / "models"), "--device", "cpu")
    x = np.random.default_rng(0).standard_normal((4, 8)).astype(np.float32)
    with SyncClient(worker.grpc, timeout_s=10) as client:
        result = client.infer("classifier", {"x": x})
    with torch.no_grad():
        np.testing.assert_allclose(result.outputs["probs"], Classifier()(torch.from_numpy(x)).numpy(), rtol=1e-5)
    assert (result.tier, result.node) == ("cloud", "w1")
    status = get_json(f"{worker.http}/v1/status")
    assert status["device"] == "cpu" and status["models"]["classifier"]["providers"] == ["cpu"]
    assert status["master"] is None and status["ready"] is True

    worker.process.send_signal(signal.SIGTERM)
    assert worker.process.wait(30) == 0, worker.log_tail()
