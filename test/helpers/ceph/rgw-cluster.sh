#!/usr/bin/env bash
# A throwaway single-node Ceph cluster with an S3 endpoint, for tests:
# 1 mon, 1 bluestore OSD on a sparse file, radosgw (beast) on 127.0.0.1, no mgr,
# no systemd. Everything (config, keys, data, logs, sockets, pids) lives under DIR.
#
#   rgw-cluster.sh start DIR   DIR must be absent or empty. Prints, on success, only
#                              KEY=VALUE lines on stdout (progress goes to stderr):
#                                AWS_ENDPOINT_URL_S3 AWS_ACCESS_KEY_ID
#                                AWS_SECRET_ACCESS_KEY AWS_REGION RGW_PIDS START_MS
#   rgw-cluster.sh stop DIR    Stops the daemons this script started in DIR (by the
#                              PIDs it recorded there, nothing else) and removes DIR.
#
# Debian 12 packages: ceph-mon ceph-osd radosgw ceph-common (--no-install-recommends).
# Pitfalls this avoids (each one met for real):
#  - pool size 1 is refused unless mon_allow_pool_size_one is set;
#  - paxos_propose_interval=0.1 (default 1 s) halves the start time;
#  - without a mgr, some ceph commands wait forever: every CLI call runs under timeout;
#  - mon_cluster_log_file and crash_dir default to /var/log and /var/lib: set them;
#  - msgr v2 only, bound to 127.0.0.1, so nothing listens on other interfaces;
#  - an anonymous GET / answers 403: any HTTP answer means radosgw is up.
set -eEuo pipefail

CLI_TIMEOUT=${RGW_CLUSTER_CLI_TIMEOUT:-30}
START_TIMEOUT=${RGW_CLUSTER_START_TIMEOUT:-90}
MARKER=.vbfs-rgw-cluster
MKFS_PID=

log() { echo "rgw-cluster: $*" >&2; }
die() { log "$*"; exit 1; }
now_ms() { date +%s%3N; }

# A TCP port nobody listens on (v4 or v6). Racy by nature; a daemon that then fails
# to bind dies, and start reports its log.
free_port() {
  local used=" " port line f
  for f in /proc/net/tcp /proc/net/tcp6; do
    [ -r "$f" ] || continue
    while read -r _ local _ state _; do
      [ "$state" = 0A ] && used+="$((16#${local##*:})) "
    done <"$f"
  done
  for _ in $(seq 1 200); do
    port=$((20000 + RANDOM % 40000))
    [[ $used == *" $port "* ]] || { echo "$port"; return 0; }
  done
  die "no free port found"
}

# "STATE STARTTIME" of a process from /proc/PID/stat, empty if there is none. The
# command name (field 2) may hold spaces and parentheses: cut after the last ')'.
proc_stat() {
  local stat
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 0
  stat=${stat##*) }
  # After the name: state ppid pgrp session tty tpgid flags minflt cminflt majflt
  # cmajflt utime stime cutime cstime priority nice threads itrealvalue starttime
  set -- $stat
  echo "$1 ${20}"
}

# Is PID still the process we started (same start time, so not a reused PID) and not
# yet dead? A zombie is dead: it is its parent's (init's) to reap, not ours.
alive() {
  local pid=$1 started=$2 st
  st=$(proc_stat "$pid")
  [ -n "$st" ] && [ "${st#* }" = "$started" ] && [ "${st%% *}" != Z ]
}

ceph_cli() { timeout "$CLI_TIMEOUT" ceph -c "$DIR/ceph.conf" "$@"; }

# Start one daemon in the foreground mode (-f) as our own child, so $! is its PID.
# Its stdout/stderr go to a file: a caller that reads our stdout must see EOF when we exit.
spawn() {
  local name=$1 pid; shift
  setsid "$@" </dev/null >>"$DIR/log/$name.out" 2>&1 &
  pid=$!
  echo "$name $pid $(proc_stat "$pid" | cut -d' ' -f2)" >>"$DIR/pids"
}

pid_of() { awk -v n="$1" '$1 == n { print $2, $3 }' "$DIR/pids"; }

alive_or_die() {
  local name=$1
  alive $(pid_of "$name") && return 0
  log "$name (pid $(pid_of "$name" | cut -d' ' -f1)) exited during start; last lines of its log:"
  tail -n 20 "$DIR/log/$name.out" 2>/dev/null >&2 || true
  exit 1
}

# Any HTTP status line on GET / (anonymous: 403, or 200 on some versions).
http_up() {
  local port=$1 line
  { exec 3<>"/dev/tcp/127.0.0.1/$port"; } 2>/dev/null || return 1
  printf 'GET / HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n' >&3
  IFS= read -r -t 2 line <&3 || line=
  exec 3<&- 3>&-
  [[ $line == HTTP/* ]]
}

# A failed start stops what it started (the directory stays, for its logs; `stop DIR`
# removes it). Nothing in here may fail: set -e would end the handler half-way.
on_start_error() {
  trap - ERR
  set +e
  log "start failed; stopping what was started"
  if [ -n "$MKFS_PID" ]; then kill -KILL "$MKFS_PID" 2>/dev/null; wait "$MKFS_PID" 2>/dev/null; fi
  stop_daemons
  exit 1
}

start() {
  local t0 fsid mon_port rgw_port osd_uuid access secret
  t0=$(now_ms)
  for b in ceph-mon ceph-osd radosgw ceph radosgw-admin ceph-authtool monmaptool; do
    command -v "$b" >/dev/null || die "$b is not installed (apt-get install --no-install-recommends ceph-mon ceph-osd radosgw ceph-common)"
  done
  mkdir -p "$DIR"
  [ -z "$(ls -A "$DIR")" ] || die "$DIR is not empty"
  DIR=$(cd "$DIR" && pwd -P)
  touch "$DIR/$MARKER" "$DIR/pids"
  mkdir -p "$DIR"/{mon,osd,rgw,log,run,crash}
  # From here on a failed start cleans up after itself.
  trap on_start_error ERR

  fsid=$(cat /proc/sys/kernel/random/uuid)
  osd_uuid=$(cat /proc/sys/kernel/random/uuid)
  mon_port=$(free_port)
  rgw_port=$(free_port)
  [ "$rgw_port" != "$mon_port" ] || rgw_port=$(free_port)

  cat >"$DIR/ceph.conf" <<EOF
[global]
fsid = $fsid
mon_host = [v2:127.0.0.1:$mon_port]
public_addr = 127.0.0.1
ms_bind_msgr1 = false
ms_bind_msgr2 = true
ms_bind_ipv6 = false
keyring = $DIR/keyring
run_dir = $DIR/run
crash_dir = $DIR/crash
log_file = $DIR/log/\$name.log
mon_cluster_log_file = $DIR/log/cluster.log
osd_pool_default_size = 1
osd_pool_default_min_size = 1
osd_pool_default_pg_num = 8
osd_pool_default_pgp_num = 8
osd_pool_default_pg_autoscale_mode = off
osd_crush_chooseleaf_type = 0
mon_allow_pool_size_one = true
mon_warn_on_pool_no_redundancy = false
mon_max_pg_per_osd = 1000
paxos_propose_interval = 0.1
auth_allow_insecure_global_id_reclaim = false

[mon]
mon_data = $DIR/mon
admin_socket = $DIR/run/\$name.asok
mon_data_avail_warn = 1
mon_data_avail_crit = 0

[osd]
osd_data = $DIR/osd
osd_objectstore = bluestore
bluestore_block_path = $DIR/osd-block
bluestore_block_create = true
bluestore_block_size = 21474836480
bluestore_fsck_on_mkfs = false
bluestore_fsck_on_mount = false
osd_memory_target = 939524096
admin_socket = $DIR/run/\$name.asok

[client.rgw.vbfs]
rgw_frontends = beast endpoint=127.0.0.1:$rgw_port
rgw_data = $DIR/rgw
admin_socket = $DIR/run/\$name.asok
rgw_enable_usage_log = false
EOF

  local conf=(-c "$DIR/ceph.conf")
  # One keyring holds every key; the mon imports them all at mkfs, so no 'ceph auth add'.
  ceph-authtool "${conf[@]}" --create-keyring "$DIR/keyring" --gen-key -n mon. --cap mon 'allow *' >/dev/null
  ceph-authtool "${conf[@]}" "$DIR/keyring" --gen-key -n client.admin \
    --cap mon 'allow *' --cap osd 'allow *' --cap mgr 'allow *' --cap mds 'allow *' >/dev/null
  ceph-authtool "${conf[@]}" "$DIR/keyring" --gen-key -n osd.0 \
    --cap mon 'allow profile osd' --cap mgr 'allow profile osd' --cap osd 'allow *' >/dev/null
  ceph-authtool "${conf[@]}" "$DIR/keyring" --gen-key -n client.rgw.vbfs \
    --cap mon 'allow rw' --cap osd 'allow rwx' --cap mgr 'allow rw' >/dev/null
  monmaptool --create --fsid "$fsid" --addv a "[v2:127.0.0.1:$mon_port]" "$DIR/monmap" >/dev/null 2>&1
  # The OSD's bluestore mkfs (seconds) needs no mon: run it while the mon starts.
  ceph-osd "${conf[@]}" --no-mon-config -i 0 --mkfs --osd-uuid "$osd_uuid" >>"$DIR/log/osd-mkfs.out" 2>&1 &
  MKFS_PID=$!
  ceph-mon "${conf[@]}" --mkfs -i a --monmap "$DIR/monmap" --keyring "$DIR/keyring" >>"$DIR/log/mkfs.out" 2>&1
  spawn mon ceph-mon "${conf[@]}" -f -i a
  log "mon up on 127.0.0.1:$mon_port ($(( $(now_ms) - t0 )) ms)"

  # Register the OSD (waits for the mon quorum), then make its bluestore and start it.
  ceph_cli osd new "$osd_uuid" 0 >/dev/null 2>>"$DIR/log/cli.out"
  alive_or_die mon
  local mkfs_ok=0
  wait "$MKFS_PID" || mkfs_ok=$?
  MKFS_PID= # reaped: its PID may be reused from now on
  [ "$mkfs_ok" = 0 ] || { log "osd mkfs failed:"; tail -n 5 "$DIR/log/osd-mkfs.out" >&2; false; }
  spawn osd ceph-osd "${conf[@]}" -f -i 0
  # radosgw creates its pools itself and waits for the OSD to come up.
  spawn rgw radosgw "${conf[@]}" -f -n client.rgw.vbfs
  log "osd and radosgw started ($(( $(now_ms) - t0 )) ms)"

  local deadline=$(( $(now_ms) + START_TIMEOUT * 1000 ))
  until http_up "$rgw_port"; do
    alive_or_die mon; alive_or_die osd; alive_or_die rgw
    [ "$(now_ms)" -lt "$deadline" ] || { log "radosgw did not answer within ${START_TIMEOUT}s"; false; }
    sleep 0.2
  done
  log "radosgw answers on 127.0.0.1:$rgw_port ($(( $(now_ms) - t0 )) ms)"

  access=$(head -c 15 /dev/urandom | base32 | tr -d '=\n')
  secret=$(head -c 30 /dev/urandom | base64 | tr -d '=\n/+')
  timeout "$CLI_TIMEOUT" radosgw-admin "${conf[@]}" user create --uid=vbfs --display-name=vbfs \
    --access-key="$access" --secret-key="$secret" >/dev/null 2>>"$DIR/log/cli.out"
  # One signed request with the new user, when curl is there to sign it (its
  # --aws-sigv4 sends no x-amz-content-sha256, which RGW requires: give it one).
  if command -v curl >/dev/null; then
    local code
    code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 10 --aws-sigv4 "aws:amz:us-east-1:s3" --user "$access:$secret" \
      -H "x-amz-content-sha256: e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855" "http://127.0.0.1:$rgw_port/") || true
    [ "$code" = 200 ] || { log "a signed ListBuckets got HTTP $code"; false; }
  fi
  trap - ERR
  log "ready ($(( $(now_ms) - t0 )) ms)"

  {
    echo "AWS_ENDPOINT_URL_S3=http://127.0.0.1:$rgw_port"
    echo "AWS_ACCESS_KEY_ID=$access"
    echo "AWS_SECRET_ACCESS_KEY=$secret"
    echo "AWS_REGION=us-east-1"
    echo "RGW_PIDS=$(awk '{ printf "%s%s", sep, $2; sep = "," }' "$DIR/pids")"
    echo "START_MS=$(( $(now_ms) - t0 ))"
  } >"$DIR/env"
  cat "$DIR/env"
}

# SIGTERM every recorded daemon that is still ours, give them a moment to exit, then
# SIGKILL. The cluster is thrown away, so a clean shutdown buys nothing but time.
stop_daemons() {
  local procs=() name pid started
  [ -f "$DIR/pids" ] || return 0
  while read -r name pid started; do
    if alive "$pid" "$started"; then procs+=("$pid $started"); kill -TERM "$pid" 2>/dev/null || true; fi
  done <"$DIR/pids"
  local deadline=$(( $(now_ms) + ${RGW_CLUSTER_STOP_GRACE_MS:-2000} )) p
  for p in "${procs[@]}"; do
    while alive $p && [ "$(now_ms)" -lt "$deadline" ]; do sleep 0.05; done
    if alive $p; then kill -KILL "${p% *}" 2>/dev/null || true; fi
  done
  for p in "${procs[@]}"; do
    for _ in $(seq 1 200); do alive $p || break; sleep 0.05; done
    alive $p && die "pid ${p% *} did not exit"
  done
  return 0
}

stop() {
  local t0
  t0=$(now_ms)
  [ -d "$DIR" ] || { log "$DIR does not exist: nothing to stop"; return 0; }
  DIR=$(cd "$DIR" && pwd -P)
  [ -f "$DIR/$MARKER" ] || die "$DIR was not made by this script (no $MARKER): not touching it"
  stop_daemons
  rm -rf -- "$DIR"
  log "stopped ($(( $(now_ms) - t0 )) ms)"
}

case "${1:-}" in
  start) [ $# -eq 2 ] || die "usage: $0 start DIR"; DIR=$2; start ;;
  stop) [ $# -eq 2 ] || die "usage: $0 stop DIR"; DIR=$2; stop ;;
  *) die "usage: $0 start|stop DIR" ;;
esac
