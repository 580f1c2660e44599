#!/usr/bin/env bash
# Start a Fogline GPU worker on this host. Settings: deploy/env/worker.env.example.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
fogline_init worker "$@"
FOGLINE_TIER_COMMAND=worker
fogline_common 8021 8020
fogline_models
if [[ $FOGLINE_DISCOVERY == embedded ]]; then
    fogline_require FOGLINE_CLOUD_CONTROL "the cloud master's control address host:port (or FOGLINE_DISCOVERY=consul)"
    FOGLINE_CMD+=(--master "${FOGLINE_CLOUD_CONTROL:-}")
fi
case ${FOGLINE_TORCH_DEVICE:-} in
    "") ;;
    cpu|cuda) FOGLINE_CMD+=(--device "$FOGLINE_TORCH_DEVICE") ;;
    *) FOGLINE_PROBLEMS+=("FOGLINE_TORCH_DEVICE must be cpu or cuda (or unset: cuda if torch sees a GPU), got '$FOGLINE_TORCH_DEVICE'") ;;
esac
fogline_security
fogline_exec
