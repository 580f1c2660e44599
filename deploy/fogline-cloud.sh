#!/usr/bin/env bash
# Start the Fogline cloud master on this host. Settings: deploy/env/cloud.env.example.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
fogline_init cloud "$@"
FOGLINE_TIER_COMMAND=cloud
fogline_common 8011 8010
fogline_port --control-port FOGLINE_CONTROL_PORT 8012
if [[ -n ${FOGLINE_CATALOG:-} ]]; then
    [[ -f $FOGLINE_CATALOG ]] || FOGLINE_PROBLEMS+=("FOGLINE_CATALOG=$FOGLINE_CATALOG does not exist: the model catalog (TOML)")
    FOGLINE_CMD+=(--catalog "$FOGLINE_CATALOG")
fi
[[ -z ${FOGLINE_MODEL_STORE:-} ]] || FOGLINE_CMD+=(--model-store "$FOGLINE_MODEL_STORE")
[[ -z ${FOGLINE_MAX_MODEL_MB:-} ]] || FOGLINE_CMD+=(--max-model-mb "$FOGLINE_MAX_MODEL_MB")
[[ -z ${FOGLINE_DASHBOARD_SAMPLE_S:-} ]] || FOGLINE_CMD+=(--dashboard-sample-s "$FOGLINE_DASHBOARD_SAMPLE_S")
fogline_security
fogline_master_security 8013 8014
fogline_exec
