"""docs/perf.md: machine facts, the tables, the targets and what limits them, from one run's results."""

from __future__ import annotations

import math
import os
import platform
import shlex
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from importlib import metadata
from pathlib import Path

from bench.results import ALL_CORES, DEVICE, DEVICE_NO_BATCHING, ECHO, EDGE, ORT, Case, Results, Summary
from bench.suite import BATCHING_CONCURRENCIES, BATCHING_MODEL, CONCURRENCIES, MODELS, Settings

PERF_DOC = Path(__file__).resolve().parent.parent / "docs" / "perf.md"
"""The report every benchmark writes its section of."""

EDGE_P50_TARGET_MS = 1.0
DEVICE_VS_ECHO_TARGET = 0.85
EDGE_VS_ORT_TARGET = 0.70


def cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo ("unknown" if it has none)."""
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_facts() -> list[tuple[str, str]]:
    """(name, value) pairs describing this machine and the software measured."""
    def version(package: str) -> str:
        try:
            return metadata.version(package)
        except metadata.PackageNotFoundError:
            return "not installed"

    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return [
        ("CPU cores (logical)", str(os.cpu_count())),
        ("CPU model", cpu_model()),
        ("OS", f"{platform.system()} {platform.release()} ({platform.machine()})"),
        ("Python", platform.python_version()),
        ("onnxruntime", version("onnxruntime")),
        ("grpcio", version("grpcio")),
        ("protobuf", version("protobuf")),
        ("numpy", version("numpy")),
        ("load average at start (1, 5, 15 min)", load),
    ]


# ---- formatting ---------------------------------------------------------------------------------

def _num(value: float | None, digits: int = 0) -> str:
    if value is None or math.isnan(value):
        return "-"
    return f"{value:,.{digits}f}"


def _pct(value: float | None) -> str:
    return "-" if value is None or math.isnan(value) else f"{value * 100:.0f}%"


def _ratio(a: Summary | None, b: Summary | None) -> float | None:
    if a is None or b is None or not b.throughput:
        return None
    return a.throughput / b.throughput


def table(header: Sequence[str], rows: Iterable[Sequence[str]], left: int = 3) -> str:
    """A Markdown table; the columns after the first ``left`` (numbers) are right-aligned."""
    align = ["---" if i < left else "---:" for i in range(len(header))]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(align) + " |"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _cpu_text(s: Summary) -> tuple[str, str]:
    """(client CPU µs/req, server CPU µs/req with the split by process when there are several)."""
    servers = {role: us for role, us in s.cpu_us.items() if role != "client"}
    server_text = _num(sum(servers.values()))
    if len(servers) > 1:
        server_text += " (" + ", ".join(f"{role} {_num(us)}" for role, us in sorted(servers.items())) + ")"
    return _num(s.cpu_us.get("client")), server_text if servers else "-"


# ---- tables -------------------------------------------------------------------------------------

def _raw_reference(results: Results, model: str, concurrency: int) -> tuple[str, Summary | None]:
    """What a path is compared with at ``concurrency``: raw ORT's single request on all cores at 1,
    its best batched throughput (any setup, any batch size) above; with the row's label."""
    if concurrency == 1:
        return f"{ORT}, {ALL_CORES.label}", results.summary(Case(model, ORT, setup=ALL_CORES))
    best = results.best_batched(model)
    return (f"{ORT}, best: {best[0].describe_raw()}", best[1]) if best else (ORT, None)


def overhead_table(results: Results) -> str:
    """Raw ORT vs device vs edge vs echo, for every model and concurrency."""
    header = ["Model", "Conc.", "Path", "req/s", "spread", "p50 ms", "p99 ms", "% of raw ORT", "% of echo",
              "mean batch", "client CPU µs/req", "server CPU µs/req"]
    rows = []
    for model in MODELS:
        for concurrency in CONCURRENCIES:
            label, raw = _raw_reference(results, model, concurrency)
            echo = results.summary(Case(model, ECHO, concurrency))
            if raw is not None:
                rows.append([model, str(concurrency), label, _num(raw.throughput), _pct(raw.spread),
                             _num(raw.p50_ms, 3), _num(raw.p99_ms, 3), "100%", "-",
                             _num(raw.mean_batch, 1), _num(raw.cpu_us.get("client")), "-"])
            for path in (DEVICE, EDGE, ECHO):
                s = results.summary(Case(model, path, concurrency))
                if s is None:
                    continue
                client_cpu, server_cpu = _cpu_text(s)
                vs_raw = _ratio(s, raw) if path != ECHO else None
                rows.append([model, str(concurrency), path, _num(s.throughput), _pct(s.spread), _num(s.p50_ms, 3),
                             _num(s.p99_ms, 3), _pct(vs_raw), _pct(_ratio(s, echo)),
                             _num(s.mean_batch, 1), client_cpu, server_cpu])
    return table(header, rows)


def raw_batch_table(results: Results) -> str:
    """Raw ORT throughput in each setup at each batch size; each model's best in bold."""
    header = ["Model", "Setup", "Batch", "rows/s", "spread", "p50 ms per run", "p99 ms per run", "CPU µs/row"]
    rows = []
    for model in MODELS:
        best = results.best_batched(model)
        for case in results.raw_batched(model):
            s = results.summary(case)
            assert s is not None
            rows_per_s = _num(s.throughput)
            if best and case == best[0]:
                rows_per_s = f"**{rows_per_s}**"
            rows.append([case.model, case.setup.label, str(case.batch), rows_per_s, _pct(s.spread),
                         _num(s.p50_ms, 3), _num(s.p99_ms, 3), _num(s.cpu_us.get("client"))])
    return table(header, rows, left=2)


def batching_table(results: Results) -> str:
    """Dynamic batching on vs off on a device node."""
    header = ["Model", "Conc.", "Batching", "req/s", "spread", "p50 ms", "p99 ms", "mean batch", "on / off",
              "server CPU µs/req"]
    rows = []
    for concurrency in BATCHING_CONCURRENCIES:
        on = results.summary(Case(BATCHING_MODEL, DEVICE, concurrency))
        off = results.summary(Case(BATCHING_MODEL, DEVICE_NO_BATCHING, concurrency))
        for label, s in (("off (max_batch_size = 0)", off), ("on (sample config)", on)):
            if s is None:
                continue
            gain = f"{_ratio(on, off):.2f}x" if s is on and _ratio(on, off) else ""
            rows.append([BATCHING_MODEL, str(concurrency), label, _num(s.throughput), _pct(s.spread),
                         _num(s.p50_ms, 3), _num(s.p99_ms, 3), _num(s.mean_batch, 1), gain,
                         _cpu_text(s)[1]])
    return table(header, rows)


# ---- targets ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class TargetCheck:
    """One acceptance target and what was measured against it."""

    name: str
    measured: float | None
    target: float
    unit: str  # "ms" or "ratio"
    at_most: bool
    """True: measured must be <= target; False: >= target. No target at all when ``target`` is nan."""

    @property
    def informational(self) -> bool:
        return math.isnan(self.target)

    @property
    def met(self) -> bool | None:
        if self.measured is None or self.informational:
            return None
        return self.measured <= self.target if self.at_most else self.measured >= self.target

    def _fmt(self, value: float) -> str:
        return f"{value:.3f} ms" if self.unit == "ms" else f"{value * 100:.0f}%"

    def row(self) -> list[str]:
        if self.measured is None:
            return [self.name, "not measured", "", "", ""]
        measured = self._fmt(self.measured)
        if self.informational:
            return [self.name, measured, "(no target)", "info", ""]
        target = ("<= " if self.at_most else ">= ") + self._fmt(self.target)
        gap = self.measured - self.target if self.at_most else self.target - self.measured
        if self.met:
            margin = f"{self._fmt(abs(gap))} to spare" if self.unit == "ms" else f"{abs(gap) * 100:.0f} points to spare"
            return [self.name, measured, target, "**met**", margin]
        if self.unit == "ms":
            margin = f"over by {self._fmt(gap)} ({self.measured / self.target:.1f}x the target)"
        else:
            margin = f"short by {gap * 100:.0f} points ({self.measured / self.target:.2f}x the target)"
        return [self.name, measured, target, "**missed**", margin]


def _p50(results: Results, model: str, path: str, concurrency: int) -> float | None:
    s = results.summary(Case(model, path, concurrency))
    return s.p50_ms if s else None


def target_checks(results: Results) -> list[TargetCheck]:
    """The acceptance targets, evaluated on ``results``."""
    best = results.best_batched(BATCHING_MODEL)
    edge_cnn = results.summary(Case(BATCHING_MODEL, EDGE, 32))
    return [
        TargetCheck("mlp via the edge, concurrency 1: p50 latency", _p50(results, "mlp", EDGE, 1),
                    EDGE_P50_TARGET_MS, "ms", at_most=True),
        TargetCheck("mlp device node, concurrency 32: throughput vs echo server",
                    _ratio(results.summary(Case("mlp", DEVICE, 32)), results.summary(Case("mlp", ECHO, 32))),
                    DEVICE_VS_ECHO_TARGET, "ratio", at_most=False),
        TargetCheck("cnn device node, concurrency 32: throughput vs echo server",
                    _ratio(results.summary(Case("cnn", DEVICE, 32)), results.summary(Case("cnn", ECHO, 32))),
                    math.nan, "ratio", at_most=False),
        TargetCheck(f"cnn with batching via the edge, concurrency 32: throughput vs raw ORT best batched "
                    f"({best[0].describe_raw() if best else 'not measured'})",
                    _ratio(edge_cnn, best[1] if best else None), EDGE_VS_ORT_TARGET, "ratio", at_most=False),
    ]


def targets_table(checks: Sequence[TargetCheck]) -> str:
    return table(["Target", "Measured", "Goal", "Result", "Margin"], (c.row() for c in checks), left=1)


# ---- analysis -----------------------------------------------------------------------------------

def _latency_paragraph(results: Results, cores: int) -> str | None:
    edge, dev, echo = (results.summary(Case("mlp", p, 1)) for p in (EDGE, DEVICE, ECHO))
    if not (edge and dev and echo):
        return None
    return (
        f"**Latency at concurrency 1 (mlp).** A bare gRPC round trip (echo) takes {echo.p50_ms:.3f} ms p50 "
        f"on this machine ({_num(echo.cpu_us.get('client'))} µs CPU in the client and "
        f"{_num(echo.server_cpu_us())} µs in the server per call), so two hops (client → edge → device) cost "
        f"about {2 * echo.p50_ms:.3f} ms before any Fogline code runs. The device node answers in "
        f"{dev.p50_ms:.3f} ms, the edge in {edge.p50_ms:.3f} ms. The edge hop adds "
        f"{edge.p50_ms - dev.p50_ms:.3f} ms ({(edge.p50_ms - dev.p50_ms) / echo.p50_ms:.1f}x a bare round "
        f"trip: the edge is a gRPC server and a gRPC client, {_num(edge.cpu_us.get('edge'))} µs CPU per "
        f"request) and the device adds {dev.p50_ms - echo.p50_ms:.3f} ms over echo "
        f"({_num(dev.server_cpu_us())} µs CPU per request, while raw ORT runs mlp in "
        f"{_num(_p50(results, 'mlp', ORT, 1), 3)} ms, {ALL_CORES.label})."
    )


def _device_vs_echo_paragraph(results: Results, model: str, cores: int) -> str | None:
    dev, echo = results.summary(Case(model, DEVICE, 32)), results.summary(Case(model, ECHO, 32))
    if not (dev and echo):
        return None
    dev_total = dev.cpu_us.get("client", 0) + dev.server_cpu_us()
    echo_total = echo.cpu_us.get("client", 0) + echo.server_cpu_us()
    return (
        f"**Device vs echo at concurrency 32 ({model}).** Client and server share {cores} cores. Per request "
        f"the echo server uses {_num(echo.server_cpu_us())} µs CPU and the device node "
        f"{_num(dev.server_cpu_us())} µs (mean batch {_num(dev.mean_batch, 1)}); the client "
        f"{_num(echo.cpu_us.get('client'))} µs with echo, {_num(dev.cpu_us.get('client'))} µs with the device. "
        f"With every core busy, "
        f"{cores} cores / total CPU per request bounds throughput at about "
        f"{_num(cores / echo_total * 1e6 if echo_total else None)} req/s for echo and "
        f"{_num(cores / dev_total * 1e6 if dev_total else None)} req/s for the device "
        f"(measured {_num(echo.throughput)} and {_num(dev.throughput)})."
    )


def _edge_vs_ort_paragraph(results: Results, cores: int) -> str | None:
    best = results.best_batched(BATCHING_MODEL)
    edge = results.summary(Case(BATCHING_MODEL, EDGE, 32))
    if not (best and edge):
        return None
    case, raw = best
    raw_cpu = raw.cpu_us.get("client", math.nan)
    edge_cpu = sum(edge.cpu_us.values())
    return (
        f"**{BATCHING_MODEL} through the edge vs raw ORT.** Raw ORT's best is {_num(raw.throughput)} images/s "
        f"({case.describe_raw()}), keeping {raw.throughput * raw_cpu / 1e6:.1f} of the {cores} cores busy "
        f"({_num(raw_cpu)} µs CPU per image). Through the edge at concurrency 32 the device ran batches of "
        f"{_num(edge.mean_batch, 1)} on average; per request the client used {_num(edge.cpu_us.get('client'))} "
        f"µs, the edge {_num(edge.cpu_us.get('edge'))} µs and the device {_num(edge.cpu_us.get('device'))} µs "
        f"(inference included): {_num(edge_cpu - raw_cpu)} µs per image more than raw ORT, spent on the same "
        f"{cores} cores as the inference."
    )


def _batching_paragraph(results: Results) -> str | None:
    best = results.best_batched(BATCHING_MODEL)
    on = results.summary(Case(BATCHING_MODEL, DEVICE, 32))
    off = results.summary(Case(BATCHING_MODEL, DEVICE_NO_BATCHING, 32))
    if not (best and on and off):
        return None
    case, top = best
    single = results.summary(replace(case, batch=1))
    if single is None:
        return None
    return (
        f"**Batching gain ({BATCHING_MODEL}).** Raw ORT's best setup, {case.setup.label}, runs "
        f"{_num(single.throughput)} images/s at batch 1 and {_num(top.throughput)} at batch {case.batch}: "
        f"in that setup batching makes the inference itself {top.throughput / single.throughput:.2f}x faster "
        f"on this CPU (every setup and batch size: the raw ORT batch sweep). On the device at concurrency 32 the "
        f"server CPU per request is {_num(off.server_cpu_us())} µs with batching off and "
        f"{_num(on.server_cpu_us())} µs with it on. Measured gain: {_ratio(on, off) or math.nan:.2f}x "
        f"(throughput spread {_pct(on.spread)} on, {_pct(off.spread)} off)."
    )


def _background_paragraph(results: Results, cores: int) -> str | None:
    noisy = [s.other_cores for c in results.measurements if (s := results.summary(c)) is not None]
    if not noisy:
        return None
    return (
        f"**Background load.** CPU time not attributed to the processes measured (other work on the "
        f"machine, idle benchmark servers, kernel interrupt time) kept a median of "
        f"{_num(statistics.median(noisy), 2)} and at most {_num(max(noisy), 2)} of the {cores} cores busy "
        "during the measurement windows."
    )


def _error_paragraphs(results: Results) -> list[str]:
    return [f"**Errors.** {case.model} via {case.path} at concurrency {case.concurrency}: {s.errors} "
            f"failed requests (first: {s.first_error})."
            for case in results.measurements if (s := results.summary(case)) is not None and s.errors]


def analysis(results: Results) -> list[str]:
    """Factual statements, from the measurements, about what limits each targeted quantity."""
    cores = os.cpu_count() or 1
    paragraphs = [
        _latency_paragraph(results, cores),
        *(_device_vs_echo_paragraph(results, model, cores) for model in MODELS),
        _edge_vs_ort_paragraph(results, cores),
        _batching_paragraph(results),
        _background_paragraph(results, cores),
    ]
    return [p for p in paragraphs if p] + _error_paragraphs(results)


# ---- the document -------------------------------------------------------------------------------

def render(results: Results, settings: Settings, command: str, date: str, facts: Sequence[tuple[str, str]]) -> str:
    """The whole of docs/perf.md."""
    checks = target_checks(results)
    load, single, batch = settings.load, settings.raw_single, settings.raw_batch
    sections = [
        "# Fogline performance",
        f"Produced by `{command}` on {date}, on the machine below, in one run: every process ran on this machine "
        f"at once. Each number is the **median of {settings.reps} repetition(s)**; *spread* is "
        f"(max - min) / median of the per-repetition throughputs. Regenerate with `make bench`.",
        table(["Fact", "Value"], ([name, value] for name, value in facts), left=2),
        "## Targets",
        targets_table(checks),
        "## Overhead: raw ONNX Runtime, device node, edge master, bare gRPC",
        "One request = one row (mlp: FP32 [1, 64]; cnn: FP32 [1, 3, 64, 64]). *raw ORT* is `session.run` "
        "in-process, the machine's best measured in the same run: at concurrency 1, single rows with one run at "
        "a time on all cores (the device's session options but `intra_op_threads = 0`, ONNX Runtime's default); "
        "at concurrency 32, the best throughput over every setup and batch size of the batch sweep below "
        "(rows/s, latency per batch run; the row says which). *device*: client → device node. "
        "*edge → device*: client → edge master → device node. *echo (gRPC only)*: a bare grpc.aio server "
        "answering with a pre-serialized response of the same size as the model's: the transport alone. "
        "*mean batch*: requests per batch the device ran in the window. CPU columns: CPU time per request "
        "of the load generator and of the server processes (from /proc).",
        overhead_table(results),
        "## Raw ONNX Runtime batch sweep",
        "Each model in two setups, each a session built as the device builds it. *one run on all cores*: "
        "`intra_op_threads = 0` (ONNX Runtime's default: one thread per physical core), one caller running back "
        "to back. The model's own setup, as the device runs it: its config.toml `intra_op_threads`, with as many "
        "caller threads running the same session at once as `[batching] instances` (the setup column says "
        "which). *rows/s*: rows all callers completed "
        "/ the window; latency per run; *CPU µs/row*: CPU of the benchmark process per row. Each model's best "
        "(the raw ORT reference at concurrency 32) is in bold.",
        raw_batch_table(results),
        f"## Dynamic batching on vs off ({BATCHING_MODEL}, device node)",
        "*off*: a copy of the model repository with `max_batch_size = 0` in cnn's config.toml, so each "
        "request runs alone; *on*: the sample config (max_batch_size 32, no queue delay).",
        batching_table(results),
        "## Analysis",
        "\n\n".join(analysis(results)),
        "## How it is measured",
        "\n".join([
            f"- Load generator: N asyncio coroutines in a closed loop over one grpc.aio channel in the benchmark "
            f"process, sending a request serialized once (`channel.unary_unary` without serializers: bytes in, "
            f"bytes out), the same for every path. Each window: {load.warmup_s:g} s warm-up, then "
            f"{load.duration_s:g} s measured; latency is `time.perf_counter` around each call, throughput counts "
            "calls completed in the window.",
            f"- Raw ORT: single-row runs (one run on all cores) for {single.duration_s:g} s after "
            f"{single.warmup_s:g} s warm-up; each setup and batch size for {batch.duration_s:g} s after "
            f"{batch.warmup_s:g} s. Parallel runs are threads calling one `InferenceSession` (`run` releases the "
            "GIL), as the device's executor does; they warm up together, start together, and the window closes "
            "when the last one's last run finishes.",
            "- Servers: `python -m fogline device|edge` subprocesses (log level WARNING) and "
            "`python -m bench.echo_server`, all started once; each repetition measures every case in turn.",
            "- Mean batch size: the delta of `models.<m>.requests` / `models.<m>.batches` in the device's "
            "`/v1/status` over the window.",
        ]),
    ]
    return "\n\n".join(sections) + "\n"


def report_command(argv: Sequence[str], module: str = "bench") -> str:
    """The command line that produced the report, as a user would type it."""
    return " ".join([f"python -m {module}", *(shlex.quote(a) for a in argv)])


def _markers(name: str) -> tuple[str, str]:
    return f"<!-- {name}: begin (written by python -m bench.{name}) -->", f"<!-- {name}: end -->"


def section_of(document: str, name: str) -> str | None:
    """The marked section ``name`` of ``document``, markers included; None if it has none."""
    begin, end = _markers(name)
    start = document.find(begin)
    stop = document.find(end, start)
    return document[start:stop + len(end)] if start >= 0 and stop >= 0 else None


def write_section(path: Path, name: str, body: str) -> None:
    """Put ``body`` in ``path`` as the marked section ``name``, replacing the old one or appending it."""
    begin, end = _markers(name)
    document = path.read_text() if path.is_file() else ""
    marked = f"{begin}\n{body}\n{end}"
    old = section_of(document, name)
    document = document.replace(old, marked) if old else document.rstrip("\n") + "\n\n" + marked + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(document)


OTHER_SECTIONS = ("cascade", "chaos", "tls", "rollout", "tracing")
"""The sections of the benchmarks that ``python -m bench`` does not run: kept when it rewrites the report."""


def keep_sections(old_document: str, new_document: str, names: Sequence[str] = OTHER_SECTIONS) -> str:
    """``new_document`` with the marked sections of ``old_document`` (other benchmarks' results) kept."""
    for name in names:
        section = section_of(old_document, name)
        if section and section_of(new_document, name) is None:
            new_document = new_document.rstrip("\n") + "\n\n" + section + "\n"
    return new_document
