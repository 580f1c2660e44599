"""Traces through a real ``fogline up`` whose processes export their spans over OTLP to a receiver in this
test: a hard input of the digits cascade, sent by the SDK, runs on a device node and escalates to the
GPU worker, in one tree of spans rooted at the SDK's; ``fogline infer --trace`` starts a trace of its own.

The tests share one stack."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from fogline.adapters import tracing
from fogline.core.escalation.catalog import load_catalog
from fogline.core.observe.spans import NO_SPANS
from fogline.local import digits
from fogline.sdk.client import SyncClient
from tests.adapters.test_tracing import OtlpReceiver, check_tree, export_to, one, start_receiver
from tests.integration.stackrun import Up, client_tls, running_stack
from tests.polling import wait_for

pytestmark = pytest.mark.integration

TIMEOUT_S = 10.0
SDK_SERVICE = "fogline-sdk-test"
SERVICES = {SDK_SERVICE, "fogline-edge", "fogline-device", "fogline-worker"}


@pytest.fixture(scope="module")
def receiver() -> Iterator[OtlpReceiver]:
    receiver, server = start_receiver()
    yield receiver
    server.stop(None)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, receiver: OtlpReceiver, sample_models: Path,
          digits_models: Path) -> Iterator[Up]:
    """A ``fogline up`` whose processes (they inherit the environment) export their spans to ``receiver``;
    the variables stay set for the module's tests (the CLI's and the SDK's spans go there too)."""
    with pytest.MonkeyPatch.context() as monkeypatch:
        export_to(monkeypatch, receiver)
        monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "100")
        with running_stack(tmp_path_factory.mktemp("traced"), sample_models, digits_models) as up:
            yield up


def complete(receiver: OtlpReceiver, trace_id: str) -> bool:
    """Whether every process on the path has exported its part of the trace, down to both batches."""
    spans = receiver.spans(trace_id)
    batches = {s.service for s in spans if s.name == "fogline.batch"}
    return {s.service for s in spans} == SERVICES and batches == {"fogline-device", "fogline-worker"}


def hard_digit(digits_models: Path) -> np.ndarray:
    """One test image the digits cascade escalates: the small model is less sure of it than the threshold."""
    threshold = load_catalog(digits_models / digits.CATALOG_FILE).entries["digits"].rule.max_prob_below
    split = digits.load_split(digits_models)
    return split.x_test[digits.small_probabilities(digits_models, split.x_test).max(axis=1) < threshold][:1]


def test_a_hard_cascade_input_is_one_trace_across_sdk_edge_device_and_worker(
        stack: Up, receiver: OtlpReceiver, digits_models: Path) -> None:
    state = stack.state()
    hard = hard_digit(digits_models)
    edge = state["regions"]["region-a"]["edge"]["grpc"]
    with SyncClient(edge, timeout_s=TIMEOUT_S, tls=client_tls(state), spans=NO_SPANS) as plain:
        wait_for(lambda: plain.infer("digits", {"input": hard}).route == "cascade-hard", timeout_s=30,
                 what="the edge to escalate hard inputs to the worker")
    sdk = tracing.setup(SDK_SERVICE)
    with SyncClient(edge, timeout_s=TIMEOUT_S, tls=client_tls(state), spans=sdk) as client:
        result = client.infer("digits", {"input": hard})
    sdk.close()
    assert (result.route, result.tier, result.node) == ("cascade-hard", "cloud", "worker-0")

    wait_for(lambda: complete(receiver, result.trace_id), timeout_s=20, what="every process's spans of the trace")
    spans = receiver.spans(result.trace_id)
    by_id = {s.span_id: s for s in spans}
    root = check_tree(spans)
    assert (root.name, root.service, root.kind) == ("fogline.infer", SDK_SERVICE, "client")
    route = one(spans, "fogline.route")
    assert route.service == "fogline-edge"
    assert route.attributes.items() >= {"fogline.route": "cascade-hard", "fogline.tier": "cloud",
                                        "fogline.node": "worker-0",
                                        "fogline.attempts": result.parameters["fogline.attempts"]}.items()
    assert by_id[route.parent_id].kind == "server" and by_id[route.parent_id].service == "fogline-edge"
    escalate = one(spans, "fogline.escalate")
    assert escalate.parent_id == route.span_id
    to_worker = one(spans, "fogline.attempt", **{"fogline.endpoint": "worker-0"})
    assert to_worker.parent_id == escalate.span_id
    (to_device,) = [s for s in spans if s.name == "fogline.attempt" and s.parent_id == route.span_id]
    assert str(to_device.attributes["fogline.endpoint"]).startswith("region-a-device-")
    for attempt, service in ((to_device, "fogline-device"), (to_worker, "fogline-worker")):
        (server,) = [s for s in spans if s.parent_id == attempt.span_id]
        assert (server.service, server.kind, server.attributes["fogline.code"]) == (service, "server", "OK")
        assert {s.name for s in spans if s.parent_id == server.span_id} == {"fogline.queue", "fogline.batch"}


def test_through_the_cloud_master_the_trace_also_holds_its_regional_dispatch(
        stack: Up, receiver: OtlpReceiver, digits_models: Path) -> None:
    state = stack.state()
    hard = hard_digit(digits_models)
    sdk = tracing.setup(SDK_SERVICE)
    with SyncClient(state["cloud"]["grpc"], timeout_s=TIMEOUT_S, tls=client_tls(state), spans=sdk) as client:
        result = client.infer("digits", {"input": hard})
    sdk.close()
    assert result.route == "cascade-hard"

    every_tier = SERVICES | {"fogline-cloud"}
    wait_for(lambda: {s.service for s in receiver.spans(result.trace_id)} == every_tier
             and sum(s.name == "fogline.batch" for s in receiver.spans(result.trace_id)) == 2,
             timeout_s=20, what="the spans of every tier, cloud master included")
    spans = receiver.spans(result.trace_id)
    by_id = {s.span_id: s for s in spans}
    root = check_tree(spans)
    assert (root.name, root.service) == ("fogline.infer", SDK_SERVICE)
    (dispatch,) = [s for s in spans if s.name == "fogline.route" and s.service == "fogline-cloud"]
    assert by_id[dispatch.parent_id].service == "fogline-cloud" and by_id[dispatch.parent_id].kind == "server"
    assert str(dispatch.attributes["fogline.node"]).endswith("-edge")
    edge_server = next(s for s in spans if s.service == "fogline-edge" and s.kind == "server")
    assert by_id[edge_server.parent_id].service == "fogline-cloud"  # the cloud's attempt at the edge


def test_fogline_infer_trace_prints_the_trace_id_of_a_trace_that_starts_at_the_cli(
        stack: Up, receiver: OtlpReceiver) -> None:
    done = subprocess.run([sys.executable, "-m", "fogline", "infer", "--state", str(stack.state_file),
                           "--model", "digits-large", "--trace"], capture_output=True, text=True, timeout=60,
                          stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr
    found = re.search(r"^trace id: ([0-9a-f]{32})$", done.stdout, re.MULTILINE)
    assert found, done.stdout
    assert "client total: " in done.stdout and "fogline.route: placement" in done.stdout, done.stdout
    trace_id = found.group(1)
    wait_for(lambda: {"fogline-cli", "fogline-edge", "fogline-worker"} <= {s.service for s in receiver.spans(trace_id)}
             and any(s.name == "fogline.batch" for s in receiver.spans(trace_id)), timeout_s=20,
             what="the CLI's trace")
    root = check_tree(receiver.spans(trace_id))
    assert (root.name, root.service) == ("fogline.infer", "fogline-cli")
