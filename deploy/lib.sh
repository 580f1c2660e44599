# shellcheck shell=bash
# Shared by the per-tier start scripts (fogline-cloud.sh, fogline-worker.sh, fogline-edge.sh,
# fogline-device.sh): read the environment file, check the settings, build the fogline command line.
#
#   fogline-<tier>.sh [--check] [ENV_FILE]
#
# ENV_FILE defaults to $FOGLINE_ENV_FILE, else /etc/fogline/<tier>.env (skipped if absent: the
# settings may come from the environment itself, as in a container). --check validates the settings
# and prints the command instead of running it. Variables already set in the environment win over
# the file. Every missing or malformed setting is reported at once, with what to set.

set -euo pipefail

FOGLINE_PROBLEMS=()
FOGLINE_CMD=()
FOGLINE_CHECK=0

fogline_init() {  # tier, "$@"
    local tier=$1; shift
    local env_file=""
    while (($#)); do
        case $1 in
            --check) FOGLINE_CHECK=1 ;;
            -h|--help) sed -n '2,12p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
            -*) echo "fogline-$tier.sh: unknown option $1 (use --check or an environment file)" >&2; exit 2 ;;
            *) env_file=$1 ;;
        esac
        shift
    done
    if [[ -n $env_file && ! -f $env_file ]]; then
        echo "fogline-$tier.sh: environment file $env_file not found" >&2; exit 2
    fi
    env_file=${env_file:-${FOGLINE_ENV_FILE:-/etc/fogline/$tier.env}}
    if [[ -f $env_file ]]; then
        fogline_load_env "$env_file"
    fi
    FOGLINE_TIER=$tier
}

fogline_load_env() {  # file: KEY=VALUE lines; the environment keeps what it already has
    local line key value
    while IFS= read -r line || [[ -n $line ]]; do
        [[ $line =~ ^[[:space:]]*(#|$) ]] && continue
        if [[ ! $line =~ ^[[:space:]]*(export[[:space:]]+)?([A-Za-z_][A-Za-z0-9_]*)=(.*)$ ]]; then
            FOGLINE_PROBLEMS+=("$1: cannot read line: $line (expected KEY=VALUE)"); continue
        fi
        key=${BASH_REMATCH[2]}; value=${BASH_REMATCH[3]}
        value=${value%\"}; value=${value#\"}; value=${value%\'}; value=${value#\'}
        if [[ -z ${!key+set} ]]; then export "$key=$value"; fi
    done < "$1"
}

fogline_require() {  # VAR "what it is"
    if [[ -z ${!1:-} ]]; then FOGLINE_PROBLEMS+=("$1 is not set: $2"); fi
}

fogline_port() {  # --flag VAR default: adds "--flag <port>"
    local value=${!2:-$3}
    if [[ ! $value =~ ^[0-9]+$ ]] || ((value > 65535)); then
        FOGLINE_PROBLEMS+=("$2 must be a port number (0-65535), got '$value'")
    fi
    FOGLINE_CMD+=("$1" "$value")
}

fogline_directory() {  # VAR "what it is"
    fogline_require "$1" "$2"
    if [[ -n ${!1:-} && ! -d ${!1} ]]; then FOGLINE_PROBLEMS+=("$1=${!1} is not a directory: $2"); fi
}

fogline_discovery() {  # sets FOGLINE_DISCOVERY; adds the discovery flags
    FOGLINE_DISCOVERY=${FOGLINE_DISCOVERY:-embedded}
    case $FOGLINE_DISCOVERY in
        embedded) ;;
        consul)
            FOGLINE_CMD+=(--discovery consul)
            [[ -n ${CONSUL_HTTP_ADDR:-} ]] || echo "note: CONSUL_HTTP_ADDR not set; using the local agent at 127.0.0.1:8500" >&2
            [[ -z ${FOGLINE_CONSUL_CHECK_INTERVAL_S:-} ]] || FOGLINE_CMD+=(--consul-check-interval-s "$FOGLINE_CONSUL_CHECK_INTERVAL_S")
            [[ -z ${FOGLINE_CONSUL_DEREGISTER_AFTER_S:-} ]] || FOGLINE_CMD+=(--consul-deregister-after-s "$FOGLINE_CONSUL_DEREGISTER_AFTER_S")
            [[ -z ${FOGLINE_CONSUL_KV_PREFIX:-} ]] || FOGLINE_CMD+=(--consul-kv-prefix "$FOGLINE_CONSUL_KV_PREFIX") ;;
        *) FOGLINE_PROBLEMS+=("FOGLINE_DISCOVERY must be 'embedded' or 'consul', got '$FOGLINE_DISCOVERY'") ;;
    esac
}

fogline_common() {  # grpc-port http-port: the flags every tier takes
    local bin
    read -r -a bin <<< "${FOGLINE_BIN:-fogline}"
    FOGLINE_CMD=("${bin[@]}" --log-level "${FOGLINE_LOG_LEVEL:-INFO}" "$FOGLINE_TIER_COMMAND")
    local host=${FOGLINE_HOST:-0.0.0.0}
    FOGLINE_CMD+=(--host "$host")
    fogline_port --grpc-port FOGLINE_GRPC_PORT "$1"
    fogline_port --http-port FOGLINE_HTTP_PORT "$2"
    if [[ -n ${FOGLINE_ADVERTISE_HOST:-} ]]; then
        FOGLINE_CMD+=(--advertise-host "$FOGLINE_ADVERTISE_HOST")
    elif [[ $host == 0.0.0.0 || $host == "::" ]]; then
        FOGLINE_PROBLEMS+=("FOGLINE_ADVERTISE_HOST is not set: the address peers reach this host at (FOGLINE_HOST=$host listens everywhere)")
    fi
    [[ -z ${FOGLINE_ID:-} ]] || FOGLINE_CMD+=(--id "$FOGLINE_ID")
    [[ -z ${FOGLINE_READY_FILE:-} ]] || FOGLINE_CMD+=(--ready-file "$FOGLINE_READY_FILE")
    [[ -z ${FOGLINE_DRAIN_GRACE_S:-} ]] || FOGLINE_CMD+=(--drain-grace-s "$FOGLINE_DRAIN_GRACE_S")
    fogline_discovery
}

fogline_models() {  # the --models/--model flags of a device node or worker
    fogline_directory FOGLINE_MODELS "the model repository (<model>/config.toml, <model>/<version>/...)"
    FOGLINE_CMD+=(--models "${FOGLINE_MODELS:-}")
    local name
    for name in ${FOGLINE_MODEL_NAMES:-}; do FOGLINE_CMD+=(--model "$name"); done
}

fogline_exec() {
    if [[ -n ${FOGLINE_EXTRA_ARGS:-} ]]; then
        local extra
        read -r -a extra <<< "$FOGLINE_EXTRA_ARGS"
        FOGLINE_CMD+=("${extra[@]}")
    fi
    if ((${#FOGLINE_PROBLEMS[@]})); then
        echo "fogline-$FOGLINE_TIER.sh: cannot start; fix these settings (environment or env file):" >&2
        printf '  - %s\n' "${FOGLINE_PROBLEMS[@]}" >&2
        exit 2
    fi
    if ((FOGLINE_CHECK)); then
        printf '%q ' "${FOGLINE_CMD[@]}"; echo
        exit 0
    fi
    exec "${FOGLINE_CMD[@]}"
}
