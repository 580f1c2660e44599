"""The ``fogline.*`` request and response parameters, and the values of tiers and routes."""

# Request/response parameters Fogline reads or writes. Clients may send `tier` and `session`.
PARAM_TIER = "fogline.tier"
PARAM_NODE = "fogline.node"
PARAM_ROUTE = "fogline.route"
PARAM_SESSION = "fogline.session"
PARAM_ATTEMPTS = "fogline.attempts"
# On the cloud master: the region to serve a request in (a request hint), and where it ran (a response tag).
PARAM_REGION = "fogline.region"
# On ModelStreamInfer: the caller's remaining time (a stream has no per-message deadline), and the
# status code of a failed request.
PARAM_TIMEOUT_MS = "fogline.timeout_ms"
PARAM_CODE = "fogline.code"


# Values of `fogline.tier`: as a request hint (`auto` lets the edge master choose) and in responses.
TIER_AUTO = "auto"
TIER_DEVICE = "device"
TIER_CLOUD = "cloud"
TIERS = (TIER_AUTO, TIER_DEVICE, TIER_CLOUD)

# Values of `fogline.route`: why a request ran where it did (DESIGN.md §2).
ROUTE_HINT = "hint"
ROUTE_PLACEMENT = "placement"
ROUTE_OVERFLOW = "overflow"
ROUTE_FAILOVER = "failover"
ROUTE_CASCADE_HARD = "cascade-hard"
ROUTE_CASCADE_EASY = "cascade-easy"
ROUTE_DEGRADED = "degraded"

# Set to true on a cascade's device answer returned because the cloud was unreachable.
PARAM_DEGRADED = "fogline.degraded"
