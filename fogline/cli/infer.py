"""``fogline infer``: send one request to a V2 endpoint (by default the running ``fogline up``'s edge master)
and print the answer and where it ran; with ``--trace``, in a new sampled trace whose id it prints."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from fogline.cli import security_flags
from fogline.errors import FoglineError


def add_parser(sub: Any, home: Path) -> None:
    """The ``infer`` subcommand's flags (``home``: where ``fogline up`` keeps its state)."""
    infer = sub.add_parser("infer", help="send one request and print the result and where it ran")
    infer.add_argument("--url", help="V2 endpoint host:port (default: the edge of the running `fogline up`)")
    infer.add_argument("--state", type=Path, default=home / "stack.json", help="state file of `fogline up`")
    infer.add_argument("--model", default="mlp")
    infer.add_argument("--input", type=Path, help=".npy input (default: random data of the model's shape)")
    infer.add_argument("--batch", type=int, default=1, help="rows of random input (default 1)")
    infer.add_argument("--session", help="affinity key (fogline.session)")
    infer.add_argument("--timeout-s", type=float, default=10.0)
    infer.add_argument("--trace", action="store_true",
                       help="send the request in a new sampled trace and print its trace id and timings (its "
                            "spans are exported where the OTEL_* variables say, if they say)")
    security_flags.add_client_flags(infer)


def stack_edge(url: str | None, state: Path) -> str | None:
    """``url``, else the first edge master of the running ``fogline up``; None (after saying why) if neither."""
    if url is not None:
        return url
    if not state.is_file():
        print(f"no --url given and no running stack ({state} not found); start one with `fogline up`",
              file=sys.stderr)
        return None
    return str(json.loads(state.read_text())["edge"]["grpc"])


def run(args: argparse.Namespace) -> int:
    """``fogline infer``: one request, its answer and where it ran (with ``--trace``, its trace)."""
    import time

    import numpy as np

    from fogline.core.tensors import numpy_dtype
    from fogline.sdk.client import SyncClient

    url = stack_edge(args.url, args.state)
    if url is None:
        return 2
    from fogline.adapters.tracing import TracingError

    try:
        spans = _client_tracing(args.trace)
    except TracingError as err:
        print(f"fogline infer: {err}", file=sys.stderr)
        return 2
    try:
        with SyncClient(url, timeout_s=args.timeout_s, spans=spans, **security_flags.client_settings(args)) as client:
            try:
                if args.input:
                    inputs = {"input": np.load(args.input)}
                else:
                    meta = client.model_metadata(args.model)
                    rng = np.random.default_rng()
                    inputs = {t.name: rng.standard_normal([args.batch if d == -1 else d for d in t.shape])
                              .astype(numpy_dtype(t.datatype)) for t in meta.inputs}
                started = time.perf_counter()
                result = client.infer(args.model, inputs, session=args.session)
                took_s = time.perf_counter() - started
            except FoglineError as err:
                print(f"error: {err.code.value}: {err}", file=sys.stderr)
                return 1
    finally:
        if spans is not None:
            spans.close()
    np.set_printoptions(precision=4, suppress=True, linewidth=120)
    print(f"model {result.model} v{result.version} via {result.endpoint}: tier={result.tier} "
          f"node={result.node} route={result.route}")
    if args.trace:
        _print_trace(result, took_s)
    for name, value in result.outputs.items():
        print(f"{name} {value.dtype} {list(value.shape)}:")
        print(value)
        if value.ndim == 2 and value.dtype.kind == "f":
            print(f"argmax: {value.argmax(axis=1).tolist()}")
    return 0


def _client_tracing(forced: bool) -> Any:
    """The spans of ``fogline infer``: with ``forced`` (``--trace``) every request starts a sampled trace,
    exported only if the OTEL_* variables configure an exporter; without it, tracing as they say (None: off)."""
    from fogline.adapters import tracing

    if not forced and not tracing.configured():
        return None
    sampler = None
    if forced:
        from opentelemetry.sdk.trace.sampling import ALWAYS_ON

        sampler = ALWAYS_ON
    return tracing.setup("fogline-cli", sampler=sampler, export=tracing.configured())


def _print_trace(result: Any, took_s: float) -> None:
    """The trace id of a ``--trace`` request and what its answer says of where it ran."""
    print(f"trace id: {result.trace_id}")
    hops = [("client total", f"{took_s * 1000:.2f} ms")]
    hops += [(key, str(value)) for key, value in sorted(result.parameters.items()) if key.startswith("fogline.")]
    for key, value in hops:
        print(f"  {key}: {value}")
