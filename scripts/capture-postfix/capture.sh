#!/usr/bin/env bash
# Make genuine Postfix log captures for sweeper's parser tests.
#
#   bash scripts/capture-postfix/capture.sh
#
# Runs as root on Debian bookworm without systemd. It installs postfix, python3
# and openssl from Debian, points Postfix (loopback only) at the local SMTP sink
# sink.py on 127.0.0.1:2525 with short retry timings, submits messages with
# submit.py, waits until the queue is empty (deferred mail expires after 60 s),
# and writes into tests/fixtures/postfix-own/:
#
#   mail.log                 + manifest.json           (run 1, short queue IDs)
#   mail-long-ids.log        + manifest-long-ids.json  (run 2, enable_long_queue_ids=yes)
#   sink.log / sink-long-ids.log  the sink's own record of each RCPT decision
#
# Postfix is stopped at the end (port 25 free again); the packages stay installed.
# Re-running it replaces the outputs with a fresh capture.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
OUT=${OUT:-$REPO/tests/fixtures/postfix-own}
WORK=/var/lib/capture-postfix
PY=/usr/bin/python3
SINK_PORT=2525
WAIT_MAX=${WAIT_MAX:-400}   # seconds to wait for the queue to drain per run

log() { printf '[capture] %s\n' "$*" >&2; }

[ "$(id -u)" = 0 ] || { echo "must run as root" >&2; exit 1; }

# --- 1. packages ----------------------------------------------------------
if ! dpkg -s postfix python3 openssl >/dev/null 2>&1; then
    log "installing postfix python3 openssl"
    echo "postfix postfix/main_mailer_type select Internet Site" | debconf-set-selections
    echo "postfix postfix/mailname string capture.example.test" | debconf-set-selections
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q postfix python3 openssl
fi
VERSION=$(postconf -h mail_version)
log "postfix $VERSION"

mkdir -p "$WORK" "$OUT"

# --- helpers ----------------------------------------------------------------
port_busy() {  # listening socket on 127.0.0.1:PORT? (no probe connection, so no log noise)
    [ -n "$(ss -Hltn "sport = :$1")" ]
}

wait_port() {  # wait_port PORT up|down
    for _ in $(seq 1 100); do
        if [ "$2" = up ] && port_busy "$1"; then return 0; fi
        if [ "$2" = down ] && ! port_busy "$1"; then return 0; fi
        sleep 0.1
    done
    log "port $1 did not go $2"; return 1
}

stop_postfix() {
    local pidf=/var/spool/postfix/pid/master.pid
    if [ -s "$pidf" ] && kill -0 "$(tr -d ' ' < "$pidf")" 2>/dev/null; then
        postfix stop >/dev/null 2>&1 || true
    fi
    wait_port 25 down || true
}

stop_sink() {
    if [ -f "$WORK/sink.pid" ]; then
        kill "$(cat "$WORK/sink.pid")" 2>/dev/null || true
        rm -f "$WORK/sink.pid"
    fi
    wait_port "$SINK_PORT" down || true
}

cleanup() { stop_postfix; stop_sink; }
trap cleanup EXIT

# Leftovers from an earlier, interrupted run.
cleanup
if port_busy 25; then echo "port 25 is in use by something else" >&2; exit 1; fi
if port_busy "$SINK_PORT"; then echo "port $SINK_PORT is in use by something else" >&2; exit 1; fi

# --- 2. TLS certificate for the sink ----------------------------------------
if [ ! -s "$WORK/sink.crt" ] || [ ! -s "$WORK/sink.key" ]; then
    openssl req -x509 -newkey rsa:2048 -nodes -days 3650 \
        -subj "/CN=sink.example.test" \
        -keyout "$WORK/sink.key" -out "$WORK/sink.crt" 2>/dev/null
fi

# --- 3. Postfix configuration -----------------------------------------------
cat > /etc/postfix/capture_alias.regexp <<'EOF'
/^(alias[^@]*)@dest\.example\.test$/ ok-${1}@dest.example.test
EOF

postconf -e \
    "myhostname = capture.example.test" \
    "mydomain = example.test" \
    "myorigin = \$myhostname" \
    "mydestination = \$myhostname, localhost" \
    "inet_interfaces = loopback-only" \
    "inet_protocols = ipv4" \
    "mynetworks = 127.0.0.0/8" \
    "relayhost = [127.0.0.1]:$SINK_PORT" \
    "default_transport = smtp" \
    "relay_transport = relay" \
    "virtual_alias_maps = regexp:/etc/postfix/capture_alias.regexp" \
    "maximal_queue_lifetime = 60s" \
    "bounce_queue_lifetime = 60s" \
    "queue_run_delay = 5s" \
    "minimal_backoff_time = 5s" \
    "maximal_backoff_time = 10s" \
    "delay_warning_time = 0h" \
    "smtp_tls_security_level = may" \
    "smtp_tls_loglevel = 1" \
    "smtp_connection_cache_destinations = [127.0.0.1]:$SINK_PORT" \
    "smtpd_tls_security_level = none" \
    "alias_maps = hash:/etc/aliases" \
    "alias_database = hash:/etc/aliases"
[ -f /etc/aliases ] || echo "postmaster: root" > /etc/aliases
newaliases

# maillog_file needs the postlogd service (present in Debian's master.cf; add it if not).
if [ -z "$(postconf -M postlog/unix-dgram 2>/dev/null)" ]; then
    postconf -M "postlog/unix-dgram=postlog   unix-dgram n  -       n       -       1       postlogd"
fi

# smtp_tls_connection_reuse needs the tlsproxy service (absent from Debian's master.cf).
if [ -z "$(postconf -M tlsproxy/unix 2>/dev/null)" ]; then
    postconf -M "tlsproxy/unix=tlsproxy  unix  -       -       y       -       0       tlsproxy"
fi

# --- 4. one capture run -------------------------------------------------------
# run_capture NAME LONGIDS TLSREUSE PLAN PREFIX LOGNAME MANIFESTNAME SINKLOGNAME
run_capture() {
    local name=$1 longids=$2 reuse=$3 plan=$4 prefix=$5 logname=$6 manifest=$7 sinklog=$8
    local maillog=/var/log/postfix-capture-$name.log

    log "run $name: enable_long_queue_ids=$longids smtp_tls_connection_reuse=$reuse"
    stop_postfix
    postconf -e "maillog_file = $maillog" "enable_long_queue_ids = $longids" \
        "smtp_tls_connection_reuse = $reuse"
    postsuper -d ALL >/dev/null 2>&1 || true
    rm -f "$maillog" "$WORK/sink-$name.log"

    setsid "$PY" "$HERE/sink.py" --port "$SINK_PORT" \
        --cert "$WORK/sink.crt" --key "$WORK/sink.key" \
        --log "$WORK/sink-$name.log" </dev/null >/dev/null 2>&1 &
    echo $! > "$WORK/sink.pid"
    wait_port "$SINK_PORT" up

    postfix start
    wait_port 25 up

    "$PY" "$HERE/submit.py" --plan "$plan" --prefix "$prefix" \
        --manifest "$OUT/$manifest" --postfix-version "$VERSION" \
        --log-file "$logname" $( [ "$longids" = yes ] && echo --long-queue-ids )

    # Wait until the queue (including Postfix's own DSNs) is empty.
    local start=$SECONDS n
    while :; do
        sleep 5
        n=$(postqueue -j | wc -l)
        log "  $((SECONDS - start))s: $n message(s) in queue"
        [ "$n" -eq 0 ] && break
        if [ $((SECONDS - start)) -ge "$WAIT_MAX" ]; then
            log "  queue not empty after ${WAIT_MAX}s; capturing anyway"
            postqueue -p >&2 || true
            break
        fi
    done
    sleep 2
    stop_postfix
    stop_sink
    sleep 1
    cp "$maillog" "$OUT/$logname"
    cp "$WORK/sink-$name.log" "$OUT/$sinklog"
    log "  wrote $OUT/$logname ($(wc -l < "$OUT/$logname") lines)"
}

# Run 1: short queue IDs; TLS connection reuse through tlsproxy plus a
# connection cache for the relayhost, so conn_use= appears.
run_capture short no  yes main own     mail.log          manifest.json          sink.log
# Run 2: long queue IDs; TLS without connection reuse (Postfix's default), so
# every delivery is its own TLS session and no conn_use= appears.
run_capture long  yes no  long ownlong mail-long-ids.log manifest-long-ids.json sink-long-ids.log

# Leave Postfix with defaults for these two settings, stopped.
postconf -e "enable_long_queue_ids = no" "smtp_tls_connection_reuse = no"

"$PY" "$HERE/verify.py" "$OUT/mail.log" "$OUT/manifest.json"
"$PY" "$HERE/verify.py" "$OUT/mail-long-ids.log" "$OUT/manifest-long-ids.json"
trap - EXIT
cleanup
log "done; postfix stopped, port 25 free"
