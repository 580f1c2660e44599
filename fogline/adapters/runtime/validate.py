"""Validating a pushed model version before the registry accepts it, in a subprocess of its own.

:func:`validate_model` runs ``python -m fogline.adapters.runtime.validate <model_dir>``, which parses
``config.toml`` with the repository loader, loads the model file on the CPU with ONNX Runtime
(``onnxruntime``) or torch (``pytorch``), whose loaders check the declared signature against the file,
and runs it once on zeros where the shapes are fixed. It prints one line of JSON: the signature found,
or ``{"error": reason}``.

A separate process, so that a corrupt model that crashes or hangs its runtime takes down neither the
cloud master nor its event loop, and so that the cloud master never imports torch itself.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from fogline.errors import InvalidInputError, truncate

DEFAULT_TIMEOUT_S = 60.0
REASON_MAX_CHARS = 600


@dataclass(frozen=True)
class ModelSummary:
    """What validation found a model version takes and returns."""

    name: str
    platform: str
    max_batch_size: int
    inputs: list[dict[str, Any]]
    """``{"name", "datatype", "shape"}`` of each input, in order."""
    outputs: list[dict[str, Any]]
    ran_on_zeros: bool
    """Whether it ran once on zeros (only when every input's shape is fixed)."""

    def to_json(self) -> dict[str, Any]:
        """The summary as the registry stores it."""
        return asdict(self)


async def validate_model(model_dir: Path, *, timeout_s: float = DEFAULT_TIMEOUT_S) -> ModelSummary:
    """Validate the model in ``model_dir`` (``config.toml`` and one version directory) in a subprocess;
    InvalidInputError with the reason when it does not load, does not fit its declaration, fails on
    zeros, crashes or takes longer than ``timeout_s``."""
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}  # NOTE: validation runs on the CPU, never takes a GPU
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", __name__, str(model_dir), stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env)
    try:
        stdout, stderr = await asyncio.wait_for(process.communicate(), timeout_s)
    except asyncio.TimeoutError:
        process.kill()
        await process.wait()
        raise InvalidInputError(f"the model did not load and run within {timeout_s:g} s") from None
    finally:
        if process.returncode is None:  # NOTE: cancelled (the upload's client went away): leave no child
            process.kill()
            await process.wait()
    return _summary(process.returncode or 0, stdout, stderr, hide=f"{Path(model_dir).parent}{os.sep}")


def _summary(returncode: int, stdout: bytes, stderr: bytes, *, hide: str) -> ModelSummary:
    """The validator's answer, or InvalidInputError with its reason (paths relative to the upload: ``hide``
    is where the server keeps it, which its clients need not know)."""
    lines = stdout.decode("utf-8", "replace").strip().splitlines()
    try:
        answer = json.loads(lines[-1]) if lines else {}
    except json.JSONDecodeError:
        answer = {}
    if returncode == 0 and isinstance(answer, dict) and "inputs" in answer:
        return ModelSummary(**answer)
    reason = answer.get("error") if isinstance(answer, dict) else None
    if not reason:
        last = (stderr.decode("utf-8", "replace").strip().splitlines() or [""])[-1]
        how = f"signal {-returncode}" if returncode < 0 else f"exit status {returncode}"
        reason = f"the model crashed its runtime ({how}){': ' + last if last else ''}"
    reason = " ".join(str(reason).replace(hide, "").split())
    raise InvalidInputError(f"model refused: {truncate(reason, REASON_MAX_CHARS)}")


# --- In the subprocess ------------------------------------------------------------------------------

def check(model_dir: Path) -> ModelSummary:
    """Load ``model_dir`` as a node would, on the CPU, and run it on zeros where its shapes are fixed."""
    from fogline.core.serving.repository import load_model

    config = load_model(model_dir)
    runtime = _load(config)
    ran = _run_on_zeros(runtime) if config.platform == "onnxruntime" else _fixed(runtime)  # torch warms up itself
    spec = runtime.spec
    return ModelSummary(name=spec.name, platform=config.platform, max_batch_size=spec.max_batch_size,
                        inputs=[_tensor(t) for t in spec.inputs], outputs=[_tensor(t) for t in spec.outputs],
                        ran_on_zeros=ran)


def _load(config: Any) -> Any:
    if config.platform == "pytorch":
        from fogline.adapters.runtime.torch import TorchModel

        return TorchModel(config, device="cpu")
    from fogline.adapters.runtime.onnx import OnnxRuntimeModel

    return OnnxRuntimeModel(config, providers=["CPUExecutionProvider"])


def _zero_shapes(runtime: Any) -> list[tuple[int, ...]] | None:
    """One row's input shapes, or None when some dimension is free (no shape is surely valid)."""
    spec = runtime.spec
    rows = (1,) if spec.max_batch_size > 0 else ()
    shapes = [(*rows, *t.shape[len(rows):]) for t in spec.inputs]
    if any(d < 0 for shape in shapes for d in shape) or any(t.datatype == "BYTES" for t in spec.inputs):
        return None
    return shapes


def _fixed(runtime: Any) -> bool:
    return _zero_shapes(runtime) is not None


def _run_on_zeros(runtime: Any) -> bool:
    import numpy as np

    from fogline.core.tensors import numpy_dtype

    shapes = _zero_shapes(runtime)
    if shapes is None:
        return False
    feeds = {t.name: np.zeros(s, numpy_dtype(t.datatype)) for t, s in zip(runtime.spec.inputs, shapes, strict=True)}
    try:
        runtime.run(feeds)
    except Exception as exc:
        raise ValueError(f"it fails on zeros of its input shapes {[list(s) for s in shapes]}: {exc}") from None
    return True


def _tensor(spec: Any) -> dict[str, Any]:
    return {"name": spec.name, "datatype": spec.datatype, "shape": list(spec.shape)}


def main(argv: list[str]) -> int:
    """Validate the model directory ``argv[0]``; print the summary or the error as one JSON line."""
    if len(argv) != 1:
        print(json.dumps({"error": "usage: python -m fogline.adapters.runtime.validate MODEL_DIR"}))
        return 2
    try:
        summary = check(Path(argv[0]))
    except Exception as exc:  # NOTE: any failure is the model's: report it, the parent refuses the push
        print(json.dumps({"error": str(exc) or type(exc).__name__}), flush=True)
        return 1
    print(json.dumps(summary.to_json()), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
