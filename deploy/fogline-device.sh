#!/usr/bin/env bash
# Start a Fogline device node on this host. Settings: deploy/env/device.env.example.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
fogline_init device "$@"
FOGLINE_TIER_COMMAND=device
fogline_common 8031 8030
fogline_require FOGLINE_REGION "the region of this device node, e.g. eu-west"
FOGLINE_CMD+=(--region "${FOGLINE_REGION:-}")
fogline_models
[[ -z ${FOGLINE_FETCH_RATE_MBPS:-} ]] || FOGLINE_CMD+=(--fetch-rate-mbps "$FOGLINE_FETCH_RATE_MBPS")
if [[ $FOGLINE_DISCOVERY == embedded ]]; then
    fogline_require FOGLINE_EDGE_CONTROL "its edge master's control address host:port (or FOGLINE_DISCOVERY=consul)"
    FOGLINE_CMD+=(--master "${FOGLINE_EDGE_CONTROL:-}")
fi
[[ -z ${FOGLINE_PROVIDERS:-} ]] || FOGLINE_CMD+=(--providers "$FOGLINE_PROVIDERS")
fogline_security
fogline_exec
