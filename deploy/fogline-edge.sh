#!/usr/bin/env bash
# Start a Fogline edge master for one region on this host. Settings: deploy/env/edge.env.example.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
fogline_init edge "$@"
FOGLINE_TIER_COMMAND=edge
fogline_common 8001 8000
fogline_require FOGLINE_REGION "the region this edge master serves, e.g. eu-west"
FOGLINE_CMD+=(--region "${FOGLINE_REGION:-}")
fogline_port --control-port FOGLINE_CONTROL_PORT 8002
if [[ $FOGLINE_DISCOVERY == embedded && -n ${FOGLINE_CLOUD_CONTROL:-} ]]; then
    FOGLINE_CMD+=(--cloud "$FOGLINE_CLOUD_CONTROL")
fi
[[ -z ${FOGLINE_DEVICE_QUEUE_LIMIT:-} ]] || FOGLINE_CMD+=(--device-queue-limit "$FOGLINE_DEVICE_QUEUE_LIMIT")
[[ -z ${FOGLINE_CACHE_DIR:-} ]] || FOGLINE_CMD+=(--cache-dir "$FOGLINE_CACHE_DIR")
[[ -z ${FOGLINE_CACHE_MB:-} ]] || FOGLINE_CMD+=(--cache-mb "$FOGLINE_CACHE_MB")
[[ -z ${FOGLINE_FETCH_RATE_MBPS:-} ]] || FOGLINE_CMD+=(--fetch-rate-mbps "$FOGLINE_FETCH_RATE_MBPS")
[[ -z ${FOGLINE_DASHBOARD_SAMPLE_S:-} ]] || FOGLINE_CMD+=(--dashboard-sample-s "$FOGLINE_DASHBOARD_SAMPLE_S")
fogline_security
fogline_master_security 8003 8004
fogline_exec
