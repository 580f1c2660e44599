from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class EnrolRequest(_message.Message):
    __slots__ = ("token", "service", "id", "region", "csr")
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    REGION_FIELD_NUMBER: _ClassVar[int]
    CSR_FIELD_NUMBER: _ClassVar[int]
    token: str
    service: str
    id: str
    region: str
    csr: bytes
    def __init__(self, token: _Optional[str] = ..., service: _Optional[str] = ..., id: _Optional[str] = ..., region: _Optional[str] = ..., csr: _Optional[bytes] = ...) -> None: ...

class RenewRequest(_message.Message):
    __slots__ = ("csr", "on_behalf_of")
    CSR_FIELD_NUMBER: _ClassVar[int]
    ON_BEHALF_OF_FIELD_NUMBER: _ClassVar[int]
    csr: bytes
    on_behalf_of: str
    def __init__(self, csr: _Optional[bytes] = ..., on_behalf_of: _Optional[str] = ...) -> None: ...

class Certificate(_message.Message):
    __slots__ = ("certificate", "ca")
    CERTIFICATE_FIELD_NUMBER: _ClassVar[int]
    CA_FIELD_NUMBER: _ClassVar[int]
    certificate: bytes
    ca: bytes
    def __init__(self, certificate: _Optional[bytes] = ..., ca: _Optional[bytes] = ...) -> None: ...

class Member(_message.Message):
    __slots__ = ("id", "service", "address", "region", "models", "capacity", "http_address", "meta")
    class MetaEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    REGION_FIELD_NUMBER: _ClassVar[int]
    MODELS_FIELD_NUMBER: _ClassVar[int]
    CAPACITY_FIELD_NUMBER: _ClassVar[int]
    HTTP_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    META_FIELD_NUMBER: _ClassVar[int]
    id: str
    service: str
    address: str
    region: str
    models: _containers.RepeatedScalarFieldContainer[str]
    capacity: int
    http_address: str
    meta: _containers.ScalarMap[str, str]
    def __init__(self, id: _Optional[str] = ..., service: _Optional[str] = ..., address: _Optional[str] = ..., region: _Optional[str] = ..., models: _Optional[_Iterable[str]] = ..., capacity: _Optional[int] = ..., http_address: _Optional[str] = ..., meta: _Optional[_Mapping[str, str]] = ...) -> None: ...

class Load(_message.Message):
    __slots__ = ("in_flight", "queue_depth")
    IN_FLIGHT_FIELD_NUMBER: _ClassVar[int]
    QUEUE_DEPTH_FIELD_NUMBER: _ClassVar[int]
    in_flight: int
    queue_depth: int
    def __init__(self, in_flight: _Optional[int] = ..., queue_depth: _Optional[int] = ...) -> None: ...

class RegisterRequest(_message.Message):
    __slots__ = ("member",)
    MEMBER_FIELD_NUMBER: _ClassVar[int]
    member: Member
    def __init__(self, member: _Optional[_Union[Member, _Mapping]] = ...) -> None: ...

class RegisterResponse(_message.Message):
    __slots__ = ("heartbeat_interval_ms", "ttl_ms")
    HEARTBEAT_INTERVAL_MS_FIELD_NUMBER: _ClassVar[int]
    TTL_MS_FIELD_NUMBER: _ClassVar[int]
    heartbeat_interval_ms: int
    ttl_ms: int
    def __init__(self, heartbeat_interval_ms: _Optional[int] = ..., ttl_ms: _Optional[int] = ...) -> None: ...

class HeartbeatRequest(_message.Message):
    __slots__ = ("id", "load", "models")
    ID_FIELD_NUMBER: _ClassVar[int]
    LOAD_FIELD_NUMBER: _ClassVar[int]
    MODELS_FIELD_NUMBER: _ClassVar[int]
    id: str
    load: Load
    models: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, id: _Optional[str] = ..., load: _Optional[_Union[Load, _Mapping]] = ..., models: _Optional[_Iterable[str]] = ...) -> None: ...

class HeartbeatResponse(_message.Message):
    __slots__ = ("known",)
    KNOWN_FIELD_NUMBER: _ClassVar[int]
    known: bool
    def __init__(self, known: _Optional[bool] = ...) -> None: ...

class DeregisterRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class DeregisterResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class WatchTopologyRequest(_message.Message):
    __slots__ = ("watcher_id", "region")
    WATCHER_ID_FIELD_NUMBER: _ClassVar[int]
    REGION_FIELD_NUMBER: _ClassVar[int]
    watcher_id: str
    region: str
    def __init__(self, watcher_id: _Optional[str] = ..., region: _Optional[str] = ...) -> None: ...

class WorkerState(_message.Message):
    __slots__ = ("member", "load")
    MEMBER_FIELD_NUMBER: _ClassVar[int]
    LOAD_FIELD_NUMBER: _ClassVar[int]
    member: Member
    load: Load
    def __init__(self, member: _Optional[_Union[Member, _Mapping]] = ..., load: _Optional[_Union[Load, _Mapping]] = ...) -> None: ...

class HardnessRule(_message.Message):
    __slots__ = ("max_prob_below", "entropy_above", "margin_below")
    MAX_PROB_BELOW_FIELD_NUMBER: _ClassVar[int]
    ENTROPY_ABOVE_FIELD_NUMBER: _ClassVar[int]
    MARGIN_BELOW_FIELD_NUMBER: _ClassVar[int]
    max_prob_below: float
    entropy_above: float
    margin_below: float
    def __init__(self, max_prob_below: _Optional[float] = ..., entropy_above: _Optional[float] = ..., margin_below: _Optional[float] = ...) -> None: ...

class CatalogEntry(_message.Message):
    __slots__ = ("name", "placement", "device_model", "cloud_model", "rule", "output")
    NAME_FIELD_NUMBER: _ClassVar[int]
    PLACEMENT_FIELD_NUMBER: _ClassVar[int]
    DEVICE_MODEL_FIELD_NUMBER: _ClassVar[int]
    CLOUD_MODEL_FIELD_NUMBER: _ClassVar[int]
    RULE_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    name: str
    placement: str
    device_model: str
    cloud_model: str
    rule: HardnessRule
    output: str
    def __init__(self, name: _Optional[str] = ..., placement: _Optional[str] = ..., device_model: _Optional[str] = ..., cloud_model: _Optional[str] = ..., rule: _Optional[_Union[HardnessRule, _Mapping]] = ..., output: _Optional[str] = ...) -> None: ...

class Topology(_message.Message):
    __slots__ = ("version", "workers", "catalog", "refresh_ms")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    WORKERS_FIELD_NUMBER: _ClassVar[int]
    CATALOG_FIELD_NUMBER: _ClassVar[int]
    REFRESH_MS_FIELD_NUMBER: _ClassVar[int]
    version: int
    workers: _containers.RepeatedCompositeFieldContainer[WorkerState]
    catalog: _containers.RepeatedCompositeFieldContainer[CatalogEntry]
    refresh_ms: int
    def __init__(self, version: _Optional[int] = ..., workers: _Optional[_Iterable[_Union[WorkerState, _Mapping]]] = ..., catalog: _Optional[_Iterable[_Union[CatalogEntry, _Mapping]]] = ..., refresh_ms: _Optional[int] = ...) -> None: ...

class ModelVersion(_message.Message):
    __slots__ = ("name", "version")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: str
    def __init__(self, name: _Optional[str] = ..., version: _Optional[str] = ...) -> None: ...

class Artefact(_message.Message):
    __slots__ = ("path", "digest", "size")
    PATH_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    path: str
    digest: str
    size: int
    def __init__(self, path: _Optional[str] = ..., digest: _Optional[str] = ..., size: _Optional[int] = ...) -> None: ...

class VersionManifest(_message.Message):
    __slots__ = ("name", "version", "files", "config")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    FILES_FIELD_NUMBER: _ClassVar[int]
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: str
    files: _containers.RepeatedCompositeFieldContainer[Artefact]
    config: str
    def __init__(self, name: _Optional[str] = ..., version: _Optional[str] = ..., files: _Optional[_Iterable[_Union[Artefact, _Mapping]]] = ..., config: _Optional[str] = ...) -> None: ...

class ModelPlan(_message.Message):
    __slots__ = ("name", "rollout_id", "stable", "canary", "canary_share", "step", "state", "shadow_share")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ROLLOUT_ID_FIELD_NUMBER: _ClassVar[int]
    STABLE_FIELD_NUMBER: _ClassVar[int]
    CANARY_FIELD_NUMBER: _ClassVar[int]
    CANARY_SHARE_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    SHADOW_SHARE_FIELD_NUMBER: _ClassVar[int]
    name: str
    rollout_id: str
    stable: VersionManifest
    canary: VersionManifest
    canary_share: float
    step: int
    state: str
    shadow_share: float
    def __init__(self, name: _Optional[str] = ..., rollout_id: _Optional[str] = ..., stable: _Optional[_Union[VersionManifest, _Mapping]] = ..., canary: _Optional[_Union[VersionManifest, _Mapping]] = ..., canary_share: _Optional[float] = ..., step: _Optional[int] = ..., state: _Optional[str] = ..., shadow_share: _Optional[float] = ...) -> None: ...

class InstallState(_message.Message):
    __slots__ = ("name", "version", "state", "bytes_done", "bytes_total", "error")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    BYTES_DONE_FIELD_NUMBER: _ClassVar[int]
    BYTES_TOTAL_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: str
    state: str
    bytes_done: int
    bytes_total: int
    error: str
    def __init__(self, name: _Optional[str] = ..., version: _Optional[str] = ..., state: _Optional[str] = ..., bytes_done: _Optional[int] = ..., bytes_total: _Optional[int] = ..., error: _Optional[str] = ...) -> None: ...

class VersionStats(_message.Message):
    __slots__ = ("requests", "errors", "p99_ms", "mirrored", "disagreed", "judged", "escalated")
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    ERRORS_FIELD_NUMBER: _ClassVar[int]
    P99_MS_FIELD_NUMBER: _ClassVar[int]
    MIRRORED_FIELD_NUMBER: _ClassVar[int]
    DISAGREED_FIELD_NUMBER: _ClassVar[int]
    JUDGED_FIELD_NUMBER: _ClassVar[int]
    ESCALATED_FIELD_NUMBER: _ClassVar[int]
    requests: int
    errors: int
    p99_ms: float
    mirrored: int
    disagreed: int
    judged: int
    escalated: int
    def __init__(self, requests: _Optional[int] = ..., errors: _Optional[int] = ..., p99_ms: _Optional[float] = ..., mirrored: _Optional[int] = ..., disagreed: _Optional[int] = ..., judged: _Optional[int] = ..., escalated: _Optional[int] = ...) -> None: ...

class RolloutReport(_message.Message):
    __slots__ = ("name", "rollout_id", "step", "devices", "devices_ready", "canary", "stable", "window_s", "install_error")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ROLLOUT_ID_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    DEVICES_FIELD_NUMBER: _ClassVar[int]
    DEVICES_READY_FIELD_NUMBER: _ClassVar[int]
    CANARY_FIELD_NUMBER: _ClassVar[int]
    STABLE_FIELD_NUMBER: _ClassVar[int]
    WINDOW_S_FIELD_NUMBER: _ClassVar[int]
    INSTALL_ERROR_FIELD_NUMBER: _ClassVar[int]
    name: str
    rollout_id: str
    step: int
    devices: int
    devices_ready: int
    canary: VersionStats
    stable: VersionStats
    window_s: float
    install_error: str
    def __init__(self, name: _Optional[str] = ..., rollout_id: _Optional[str] = ..., step: _Optional[int] = ..., devices: _Optional[int] = ..., devices_ready: _Optional[int] = ..., canary: _Optional[_Union[VersionStats, _Mapping]] = ..., stable: _Optional[_Union[VersionStats, _Mapping]] = ..., window_s: _Optional[float] = ..., install_error: _Optional[str] = ...) -> None: ...

class SyncModelsRequest(_message.Message):
    __slots__ = ("id", "loaded", "installs", "rollouts")
    ID_FIELD_NUMBER: _ClassVar[int]
    LOADED_FIELD_NUMBER: _ClassVar[int]
    INSTALLS_FIELD_NUMBER: _ClassVar[int]
    ROLLOUTS_FIELD_NUMBER: _ClassVar[int]
    id: str
    loaded: _containers.RepeatedCompositeFieldContainer[ModelVersion]
    installs: _containers.RepeatedCompositeFieldContainer[InstallState]
    rollouts: _containers.RepeatedCompositeFieldContainer[RolloutReport]
    def __init__(self, id: _Optional[str] = ..., loaded: _Optional[_Iterable[_Union[ModelVersion, _Mapping]]] = ..., installs: _Optional[_Iterable[_Union[InstallState, _Mapping]]] = ..., rollouts: _Optional[_Iterable[_Union[RolloutReport, _Mapping]]] = ...) -> None: ...

class SyncModelsResponse(_message.Message):
    __slots__ = ("known", "plans")
    KNOWN_FIELD_NUMBER: _ClassVar[int]
    PLANS_FIELD_NUMBER: _ClassVar[int]
    known: bool
    plans: _containers.RepeatedCompositeFieldContainer[ModelPlan]
    def __init__(self, known: _Optional[bool] = ..., plans: _Optional[_Iterable[_Union[ModelPlan, _Mapping]]] = ...) -> None: ...

class FetchArtefactRequest(_message.Message):
    __slots__ = ("digest", "offset")
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    digest: str
    offset: int
    def __init__(self, digest: _Optional[str] = ..., offset: _Optional[int] = ...) -> None: ...

class ArtefactChunk(_message.Message):
    __slots__ = ("data", "size")
    DATA_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    size: int
    def __init__(self, data: _Optional[bytes] = ..., size: _Optional[int] = ...) -> None: ...
