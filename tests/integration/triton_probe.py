"""Talk to a Fogline V2 endpoint with the official ``tritonclient.grpc`` and print what it answered as JSON.

Run as a separate process (``python tests/integration/triton_probe.py --input x.npy URL...``): tritonclient's
protobuf definitions of ``inference.*`` collide with Fogline's own in one process.

With ``--repository`` it uses the model-repository extension instead (index, ``load_model("cnn")``, an
inference of cnn, ``unload_model("mlp")``, index), each call's answer or error recorded in turn (with
the environment's ``PROBE_ADMIN_TOKEN``, sent as ``authorization: Bearer <token>``, never on the command
line); the input is then cnn's.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

import numpy as np
import tritonclient.grpc as triton
from google.protobuf.json_format import MessageToDict

MODEL, INPUT, OUTPUT = "mlp", "input", "logits"


def _tensors(specs: Any) -> list[dict[str, Any]]:
    return [{"name": t.name, "datatype": t.datatype, "shape": [int(d) for d in t.shape]} for t in specs]


def _parameters(result: Any) -> dict[str, Any]:
    params = MessageToDict(result.get_response()).get("parameters", {})
    return {key: next(iter(value.values())) for key, value in params.items()}


def _output(result: Any) -> tuple[list[Any], bool]:
    """The output as nested lists, and whether it came as raw bytes (else typed contents)."""
    response = result.get_response()
    if response.raw_output_contents:
        return result.as_numpy(OUTPUT).tolist(), True
    tensor = result.get_output(OUTPUT)
    values = np.array(tensor.contents.fp32_contents, dtype=np.float32).reshape([int(d) for d in tensor.shape])
    return values.tolist(), False


def probe(url: str, x: np.ndarray, tls: dict[str, str] | None = None) -> dict[str, Any]:
    client = (triton.InferenceServerClient(url) if tls is None else triton.InferenceServerClient(
        url, ssl=True, root_certificates=tls["ca"], private_key=tls["key"], certificate_chain=tls["cert"]))
    try:
        out: dict[str, Any] = {
            "live": client.is_server_live(),
            "ready": client.is_server_ready(),
            "model_ready": client.is_model_ready(MODEL),
        }
        meta = client.get_model_metadata(MODEL)
        out["metadata"] = {"name": meta.name, "versions": list(meta.versions), "platform": meta.platform,
                           "inputs": _tensors(meta.inputs), "outputs": _tensors(meta.outputs)}

        # Binary: set_data_from_numpy sends raw_input_contents.
        binary = triton.InferInput(INPUT, list(x.shape), "FP32")
        binary.set_data_from_numpy(x)
        result = client.infer(MODEL, [binary], outputs=[triton.InferRequestedOutput(OUTPUT)])
        values, raw = _output(result)
        out["binary"] = {"output": values, "raw_reply": raw, "parameters": _parameters(result),
                         "model_name": result.get_response().model_name}

        # Typed: the values in contents.fp32_contents, no raw_input_contents (binary_data=False).
        typed = triton.InferInput(INPUT, list(x.shape), "FP32")
        typed._get_tensor().contents.fp32_contents.extend(x.ravel().tolist())
        result = client.infer(MODEL, [typed], outputs=[triton.InferRequestedOutput(OUTPUT)])
        values, raw = _output(result)
        out["typed"] = {"output": values, "raw_reply": raw, "parameters": _parameters(result),
                        "model_name": result.get_response().model_name}
        return out
    finally:
        client.close()


def _attempt(steps: dict[str, Any], name: str, call: Any) -> bool:
    """Run ``call``; its answer (or its error's status and message) as ``steps[name]``; whether it worked."""
    try:
        steps[name] = {"ok": call()}
    except triton.InferenceServerException as exc:
        steps[name] = {"status": exc.status(), "message": exc.message()}
        return False
    return True


def repository(url: str, x: np.ndarray, tls: dict[str, str] | None, token: str | None) -> dict[str, Any]:
    """The repository calls in turn, stopping at the first refused one."""
    client = (triton.InferenceServerClient(url) if tls is None else triton.InferenceServerClient(
        url, ssl=True, root_certificates=tls["ca"], private_key=tls["key"], certificate_chain=tls["cert"]))
    headers = {"authorization": f"Bearer {token}"} if token else None
    steps: dict[str, Any] = {}

    def index() -> list[dict[str, Any]]:
        reply = client.get_model_repository_index(headers=headers)
        return [{"name": m.name, "version": m.version, "state": m.state, "reason": m.reason} for m in reply.models]

    def infer_cnn() -> str:
        tensor = triton.InferInput(INPUT, list(x.shape), "FP32")
        tensor.set_data_from_numpy(x)
        return str(client.infer("cnn", [tensor]).get_response().model_version)

    try:
        calls = [("index", index), ("load", lambda: client.load_model("cnn", headers=headers)),
                 ("infer", infer_cnn), ("unload", lambda: client.unload_model("mlp", headers=headers)),
                 ("index_after", index)]
        for name, call in calls:
            if not _attempt(steps, name, call):
                break
        return steps
    finally:
        client.close()


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--input", required=True, help=".npy file: FP32 [N, 64] input of mlp")
    parser.add_argument("--ca", help="with --cert and --key: TLS (ssl=True) with these PEM files")
    parser.add_argument("--cert")
    parser.add_argument("--key")
    parser.add_argument("--repository", action="store_true", help="use the model-repository extension")
    parser.add_argument("urls", nargs="+", help="V2 gRPC endpoints host:port")
    args = parser.parse_args()
    x = np.load(args.input).astype(np.float32)
    tls = {"ca": args.ca, "cert": args.cert, "key": args.key} if args.ca else None
    if args.repository:
        json.dump({url: repository(url, x, tls, os.environ.get("PROBE_ADMIN_TOKEN")) for url in args.urls}, sys.stdout)
    else:
        json.dump({url: probe(url, x, tls) for url in args.urls}, sys.stdout)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
