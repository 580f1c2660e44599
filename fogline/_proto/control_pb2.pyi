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
