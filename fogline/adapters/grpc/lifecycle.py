"""The model lifecycle's messages on the control plane (``SyncModels``), to and from the core's values."""

from __future__ import annotations

from fogline._proto import control_pb2 as cpb
from fogline.core.lifecycle.plan import (
    ArtefactRef,
    InstallState,
    ModelPlan,
    RolloutReport,
    VersionManifest,
    VersionStats,
)


def manifest_to_proto(m: VersionManifest | None) -> cpb.VersionManifest | None:
    if m is None:
        return None
    return cpb.VersionManifest(name=m.name, version=m.version, config=m.config,
                               files=[cpb.Artefact(path=f.path, digest=f.digest, size=f.size) for f in m.files])


def manifest_from_proto(msg: cpb.VersionManifest) -> VersionManifest:
    return VersionManifest(name=msg.name, version=msg.version, config=msg.config,
                           files=tuple(ArtefactRef(f.path, f.digest, f.size) for f in msg.files))


def plan_to_proto(plan: ModelPlan) -> cpb.ModelPlan:
    return cpb.ModelPlan(name=plan.name, rollout_id=plan.rollout_id, stable=manifest_to_proto(plan.stable),
                         canary=manifest_to_proto(plan.canary), canary_share=plan.canary_share, step=plan.step,
                         state=plan.state, shadow_share=plan.shadow_share)


def plan_from_proto(msg: cpb.ModelPlan) -> ModelPlan:
    return ModelPlan(name=msg.name, rollout_id=msg.rollout_id,
                     stable=manifest_from_proto(msg.stable) if msg.HasField("stable") else None,
                     canary=manifest_from_proto(msg.canary) if msg.HasField("canary") else None,
                     canary_share=msg.canary_share, step=msg.step, state=msg.state, shadow_share=msg.shadow_share)


def _stats_to_proto(s: VersionStats) -> cpb.VersionStats:
    return cpb.VersionStats(requests=s.requests, errors=s.errors, p99_ms=s.p99_ms, mirrored=s.mirrored,
                            disagreed=s.disagreed, judged=s.judged, escalated=s.escalated)


def _stats_from_proto(m: cpb.VersionStats) -> VersionStats:
    return VersionStats(requests=m.requests, errors=m.errors, p99_ms=m.p99_ms, mirrored=m.mirrored,
                        disagreed=m.disagreed, judged=m.judged, escalated=m.escalated)


def report_to_proto(r: RolloutReport) -> cpb.RolloutReport:
    return cpb.RolloutReport(name=r.name, rollout_id=r.rollout_id, step=r.step, devices=r.devices,
                             devices_ready=r.devices_ready, canary=_stats_to_proto(r.canary),
                             stable=_stats_to_proto(r.stable), window_s=r.window_s, install_error=r.install_error)


def report_from_proto(m: cpb.RolloutReport) -> RolloutReport:
    return RolloutReport(name=m.name, rollout_id=m.rollout_id, step=m.step, devices=m.devices,
                         devices_ready=m.devices_ready, canary=_stats_from_proto(m.canary),
                         stable=_stats_from_proto(m.stable), window_s=m.window_s,
                         install_error=m.install_error[:1000])


def install_to_proto(i: InstallState) -> cpb.InstallState:
    return cpb.InstallState(name=i.name, version=i.version, state=i.state, bytes_done=i.bytes_done,
                            bytes_total=i.bytes_total, error=i.error)


def install_from_proto(m: cpb.InstallState) -> InstallState:
    return InstallState(name=m.name, version=m.version, state=m.state, bytes_done=m.bytes_done,
                        bytes_total=m.bytes_total, error=m.error[:1000])
