# shellcheck shell=bash
# Shared by the per-tier start scripts (fogline-cloud.sh, fogline-worker.sh, fogline-edge.sh,
# fogline-device.sh): read the environment file, check the settings, build the fogline command line.
#
#   fogline-<tier>.sh [--check] [ENV_FILE]
#
# ENV_FILE defaults to $FOGLINE_ENV_FILE, else /etc/fogline/<tier>.env (skipped if absent: the
# settings may come from the environment itself, as in a container). --check validates the settings
# and prints the command instead of running it. Variables already set in the environment win over
# the file. Every missing or malformed setting is reported at once, with what to set. Without TLS
# (FOGLINE_TLS_CERT/KEY/CA) a tier only starts on a loopback FOGLINE_HOST, or with FOGLINE_ALLOW_INSECURE=1.

set -euo pipefail

FOGLINE_PROBLEMS=()
FOGLINE_CMD=()
FOGLINE_CHECK=0
FOGLINE_PORTS=()  # "port VAR" of every fixed port asked for, to catch two settings naming one port
FOGLINE_TLS_VARS=(FOGLINE_TLS_CERT FOGLINE_TLS_KEY FOGLINE_TLS_CA)
FOGLINE_SECURITY_DOC='deploy/README.md, "TLS and credentials"'

fogline_init() {  # tier, "$@"
    local tier=$1; shift
    local env_file=""
    while (($#)); do
        case $1 in
            --check) FOGLINE_CHECK=1 ;;
            -h|--help) sed -n '2,11p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
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
    local line key value number=0 shared=0
    if fogline_world_readable "$1"; then shared=1; fi
    while IFS= read -r line || [[ -n $line ]]; do
        number=$((number + 1))
        [[ $line =~ ^[[:space:]]*(#|$) ]] && continue
        if [[ ! $line =~ ^[[:space:]]*(export[[:space:]]+)?([A-Za-z_][A-Za-z0-9_]*)=(.*)$ ]]; then
            # NOTE: the line itself is not shown: it may be a secret (a join token) written wrongly.
            FOGLINE_PROBLEMS+=("$1 line $number cannot be read (expected KEY=VALUE; the line is not shown)"); continue
        fi
        key=${BASH_REMATCH[2]}; value=$(fogline_unquote "${BASH_REMATCH[3]}")
        if [[ $key == *_TOKEN && -n $value ]] && ((shared)); then
            FOGLINE_PROBLEMS+=("$key is in $1, which every user can read: chmod 600 it (or 640, group fogline), or use ${key}_FILE")
        fi
        if [[ -z ${!key+set} ]]; then export "$key=$value"; fi
    done < "$1"
}

fogline_unquote() {  # raw value: 'v' or "v" (a comment may follow), or v up to a " # comment"
    local double='^"([^"]*)"[[:space:]]*(#.*)?$' single="^'([^']*)'[[:space:]]*(#.*)?\$" value=$1
    if [[ $value =~ $double || $value =~ $single ]]; then
        printf '%s' "${BASH_REMATCH[1]}"; return
    fi
    value=${value%%[[:space:]]#*}
    printf '%s' "${value%"${value##*[![:space:]]}"}"
}

fogline_require() {  # VAR "what it is"
    if [[ -z ${!1:-} ]]; then FOGLINE_PROBLEMS+=("$1 is not set: $2"); fi
}

fogline_port() {  # --flag VAR default: adds "--flag <port>"
    local value=${!2:-$3} used
    if [[ ! $value =~ ^[0-9]+$ ]] || ((value > 65535)); then
        FOGLINE_PROBLEMS+=("$2 must be a port number (0-65535), got '$value'")
    elif ((value)); then
        for used in "${FOGLINE_PORTS[@]}"; do
            [[ ${used%% *} != "$value" ]] || FOGLINE_PROBLEMS+=("$2 and ${used#* } are both port $value: give each its own")
        done
        FOGLINE_PORTS+=("$value $2")
    fi
    FOGLINE_CMD+=("$1" "$value")
}

fogline_directory() {  # VAR "what it is"
    fogline_require "$1" "$2"
    if [[ -n ${!1:-} && ! -d ${!1} ]]; then FOGLINE_PROBLEMS+=("$1=${!1} is not a directory: $2"); fi
}

fogline_file() {  # VAR "what it is": the file VAR names exists and can be read; false (reported) if not
    if [[ ! -f ${!1} ]]; then
        FOGLINE_PROBLEMS+=("$1=${!1} not found: $2"); return 1
    elif [[ ! -r ${!1} ]]; then
        FOGLINE_PROBLEMS+=("$1=${!1} cannot be read by user $(id -un): $2"); return 1
    fi
}

fogline_world_readable() {  # file: whether users outside its owner and group may read it
    [[ -n $(find "$1" -maxdepth 0 -perm -0004 2>/dev/null) ]]
}

fogline_private_file() {  # VAR "what it is": a file holding a secret; refused if every user can read it
    if [[ ${!1} == fogline-jt-* ]]; then  # NOTE: a token pasted where its file's path goes: never shown
        FOGLINE_PROBLEMS+=("$1 holds a join token, not a path: write the token to a file (mode 600) and name that file"); return 1
    fi
    fogline_file "$1" "$2" || return 1
    if fogline_world_readable "${!1}"; then
        FOGLINE_PROBLEMS+=("$1=${!1} can be read by every user: chmod 600 it (or 640, group fogline): $2"); return 1
    fi
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

fogline_security() {  # the TLS, API-key and enrolment flags of every tier; no plaintext off loopback
    local var missing=()
    for var in "${FOGLINE_TLS_VARS[@]}"; do [[ -n ${!var:-} ]] || missing+=("$var"); done
    case ${#missing[@]} in
        0) fogline_tls ;;
        3) fogline_plaintext ;;
        *) for var in "${missing[@]}"; do
               FOGLINE_PROBLEMS+=("$var is not set: FOGLINE_TLS_CERT (this host's certificate), FOGLINE_TLS_KEY (its key) and FOGLINE_TLS_CA (the fleet CA) go together")
           done ;;
    esac
    fogline_client_auth
    if [[ -n ${FOGLINE_API_KEYS:-} ]]; then
        fogline_file FOGLINE_API_KEYS "the API keys file (fogline keys create FILE --name NAME)" || true
        FOGLINE_CMD+=(--api-keys "$FOGLINE_API_KEYS")
    fi
}

fogline_tls() {  # all three TLS settings: their flags; a missing certificate is enrolled for with a join token
    FOGLINE_CMD+=(--tls-cert "$FOGLINE_TLS_CERT" --tls-key "$FOGLINE_TLS_KEY" --tls-ca "$FOGLINE_TLS_CA")
    fogline_file FOGLINE_TLS_CA "the fleet CA certificate (the ca.pem that fogline certs issue writes)" || true
    if [[ -f $FOGLINE_TLS_CERT && -f $FOGLINE_TLS_KEY ]]; then
        fogline_file FOGLINE_TLS_CERT "this host's certificate" || true
        fogline_private_file FOGLINE_TLS_KEY "this host's private key" || true
        if [[ -n ${FOGLINE_JOIN_TOKEN_FILE:-} && -f $FOGLINE_JOIN_TOKEN_FILE ]]; then
            echo "note: FOGLINE_TLS_CERT exists, so the join token is not used; delete $FOGLINE_JOIN_TOKEN_FILE" >&2
        fi
    else
        fogline_enrolment
    fi
    [[ -z ${FOGLINE_ENROL:-} ]] || FOGLINE_CMD+=(--enrol "$FOGLINE_ENROL")
}

fogline_enrolment() {  # no certificate yet: enrol with a join token (the Python reads FOGLINE_JOIN_TOKEN itself)
    local var
    if [[ -z ${FOGLINE_JOIN_TOKEN_FILE:-} && -z ${FOGLINE_JOIN_TOKEN:-} ]]; then
        for var in FOGLINE_TLS_CERT FOGLINE_TLS_KEY; do
            [[ -f ${!var} ]] || FOGLINE_PROBLEMS+=("$var=${!var} not found: issue one (fogline certs issue ... --out $(dirname "${!var}")), or set FOGLINE_JOIN_TOKEN_FILE and FOGLINE_ENROL to enrol for one")
        done
        return
    fi
    if [[ -n ${FOGLINE_JOIN_TOKEN_FILE:-} ]]; then
        fogline_private_file FOGLINE_JOIN_TOKEN_FILE "the join token (fogline certs token)" || true
        FOGLINE_CMD+=(--join-token-file "$FOGLINE_JOIN_TOKEN_FILE")
    fi
    fogline_require FOGLINE_ENROL "the enrolment address host:port to enrol at with the join token (a master's FOGLINE_ENROL_PORT: 8004 on an edge master, 8014 on the cloud master)"
    var=$(dirname "$FOGLINE_TLS_CERT")
    if [[ -d $var && ! -w $var ]]; then
        FOGLINE_PROBLEMS+=("FOGLINE_TLS_CERT: $var is not writable by user $(id -un): the enrolled certificate and key are written there")
    fi
}

fogline_plaintext() {  # no TLS: refused off loopback unless FOGLINE_ALLOW_INSECURE=1, and then loudly
    local host=${FOGLINE_HOST:-0.0.0.0} var
    for var in FOGLINE_JOIN_TOKEN_FILE FOGLINE_ENROL; do
        [[ -z ${!var:-} ]] || FOGLINE_PROBLEMS+=("$var needs FOGLINE_TLS_CERT, FOGLINE_TLS_KEY and FOGLINE_TLS_CA: where the enrolled certificate goes, and the fleet CA")
    done
    case ${FOGLINE_ALLOW_INSECURE:-} in
        ""|0|1) ;;
        *) FOGLINE_PROBLEMS+=("FOGLINE_ALLOW_INSECURE must be 1 (or unset), got '$FOGLINE_ALLOW_INSECURE'"); return ;;
    esac
    if fogline_is_loopback "$host"; then return; fi
    if [[ ${FOGLINE_ALLOW_INSECURE:-} != 1 ]]; then
        FOGLINE_PROBLEMS+=("FOGLINE_TLS_CERT, FOGLINE_TLS_KEY and FOGLINE_TLS_CA are not set, and FOGLINE_HOST=$host is not loopback: set them to this host's certificate, key and the fleet CA ($FOGLINE_SECURITY_DOC), or set FOGLINE_ALLOW_INSECURE=1 to run in plaintext on a lab network")
        return
    fi
    export FOGLINE_ALLOW_INSECURE=1  # NOTE: the Python refuses plaintext off loopback too, unless it sees this
    {
        echo "WARNING: FOGLINE_ALLOW_INSECURE=1: fogline $FOGLINE_TIER_COMMAND listens on $host WITHOUT TLS."
        echo "WARNING: anyone who can reach it can send it requests, join the fleet and read its traffic."
        echo "WARNING: only for an isolated lab network; set FOGLINE_TLS_CERT, FOGLINE_TLS_KEY and FOGLINE_TLS_CA instead."
    } >&2
}

fogline_is_loopback() {  # host: whether it only listens on this machine (as the Python's check decides)
    [[ $1 == localhost || $1 == ::1 || $1 == "[::1]" || $1 =~ ^127\.[0-9]+\.[0-9]+\.[0-9]+$ ]]
}

fogline_client_auth() {  # FOGLINE_CLIENT_AUTH: whether inference clients need a fleet certificate
    case ${FOGLINE_CLIENT_AUTH:-} in
        "") ;;
        none|optional|require) FOGLINE_CMD+=(--client-auth "$FOGLINE_CLIENT_AUTH") ;;
        *) FOGLINE_PROBLEMS+=("FOGLINE_CLIENT_AUTH must be none, optional or require (the default), got '$FOGLINE_CLIENT_AUTH'") ;;
    esac
    if [[ ${FOGLINE_CLIENT_AUTH:-} == none && -z ${FOGLINE_API_KEYS:-} ]]; then
        echo "note: FOGLINE_CLIENT_AUTH=none and no FOGLINE_API_KEYS: any client that reaches the gRPC port may run inference" >&2
    fi
}

fogline_master_security() {  # admin-port enrol-port defaults: a master's fleet CA, enrolment and admin API flags
    fogline_port --admin-port FOGLINE_ADMIN_PORT "$1"
    fogline_port --enrol-port FOGLINE_ENROL_PORT "$2"
    [[ -z ${FOGLINE_CA_DIR:-} ]] || fogline_ca_dir
    if [[ -n ${FOGLINE_ADMIN_TOKEN_FILE:-} ]]; then
        fogline_private_file FOGLINE_ADMIN_TOKEN_FILE "the admin API's bearer token (a long random string)" || true
        FOGLINE_CMD+=(--admin-token-file "$FOGLINE_ADMIN_TOKEN_FILE")
    fi
    if [[ -n ${FOGLINE_ENROLLED_CERT_TTL_S:-} ]]; then
        [[ $FOGLINE_ENROLLED_CERT_TTL_S =~ ^[0-9]+(\.[0-9]+)?$ && ! $FOGLINE_ENROLLED_CERT_TTL_S =~ ^0+(\.0+)?$ ]] \
            || FOGLINE_PROBLEMS+=("FOGLINE_ENROLLED_CERT_TTL_S must be a number of seconds above 0, got '$FOGLINE_ENROLLED_CERT_TTL_S'")
        FOGLINE_CMD+=(--enrolled-cert-ttl-s "$FOGLINE_ENROLLED_CERT_TTL_S")
    fi
}

fogline_ca_dir() {  # FOGLINE_CA_DIR: the fleet CA this master signs enrolments and renewals with
    local what="the fleet CA directory (fogline certs init DIR)"
    FOGLINE_CMD+=(--ca-dir "$FOGLINE_CA_DIR")
    fogline_directory FOGLINE_CA_DIR "$what"
    [[ -d $FOGLINE_CA_DIR ]] || return 0
    if [[ ! -f $FOGLINE_CA_DIR/ca.pem || ! -f $FOGLINE_CA_DIR/ca.key ]]; then
        FOGLINE_PROBLEMS+=("FOGLINE_CA_DIR=$FOGLINE_CA_DIR has no ca.pem and ca.key: $what")
    elif fogline_world_readable "$FOGLINE_CA_DIR/ca.key"; then
        FOGLINE_PROBLEMS+=("FOGLINE_CA_DIR: $FOGLINE_CA_DIR/ca.key can be read by every user: chmod 600 it")
    fi
    if [[ ! -w $FOGLINE_CA_DIR ]]; then
        FOGLINE_PROBLEMS+=("FOGLINE_CA_DIR=$FOGLINE_CA_DIR is not writable by user $(id -un): redeemed join tokens and enrolled members are recorded there")
    fi
    if [[ -z ${FOGLINE_TLS_CERT:-} ]]; then
        FOGLINE_PROBLEMS+=("FOGLINE_CA_DIR needs FOGLINE_TLS_CERT, FOGLINE_TLS_KEY and FOGLINE_TLS_CA: a master signs enrolments only over TLS")
    fi
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
