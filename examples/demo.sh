#!/usr/bin/env bash
# vbfs in one command, on a fresh Debian/Ubuntu machine with Node 20, as root:
#
#   examples/demo.sh              # set up, mount, put ext4 on a volume, leave it mounted
#   examples/demo.sh --unmount    # the same, then take everything down again
#
# What it does, in order (each step is skipped when already done):
#   1. installs the system packages vbfs needs (libfuse2, fuse or fuse3,
#      e2fsprogs, util-linux) with apt-get if a command or library is missing;
#   2. npm ci (when node_modules is missing or older than package-lock.json), npm run build;
#   3. creates the volume 'demo' (1 GiB, sparse) in the default store
#      ($VBFS_STORE, else ~/.local/share/vbfs);
#   4. mounts the store at $VBFS_DEMO_DIR/mnt (default /tmp/vbfs-demo/mnt);
#   5. attaches <mnt>/demo to a loop device, creates ext4 on it (first run only),
#      mounts it at $VBFS_DEMO_DIR/ext;
#   6. writes a file there, syncs, reads it back and compares checksums;
#   7. prints the live counters and the commands that take it all down.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VBFS="$REPO/bin/vbfs"
DEMO_DIR=${VBFS_DEMO_DIR:-/tmp/vbfs-demo}
MNT="$DEMO_DIR/mnt"
EXT="$DEMO_DIR/ext"
VOLUME=demo
UNMOUNT=0
for arg in "$@"; do
  case "$arg" in
  --unmount) UNMOUNT=1 ;;
  -h | --help) sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
  *) echo "demo.sh: unknown argument '$arg' (try --help)" >&2; exit 2 ;;
  esac
done

say() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }
die() { echo "demo.sh: $*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "run as root (FUSE mount, losetup and mount need it): sudo $0 $*"
command -v node >/dev/null || die "Node.js 20 or newer is required (https://nodejs.org, or: apt-get install nodejs)"
NODE_MAJOR=$(node -p 'process.versions.node.split(".")[0]')
[ "$NODE_MAJOR" -ge 20 ] || die "Node.js 20 or newer is required (found $(node -v))"

# 1. System packages ----------------------------------------------------------
say "checking system packages"
missing=()
# (Not `ldconfig -p | grep -q`: with pipefail, grep quitting early fails the pipe.)
if ! grep -q 'libfuse\.so\.2' <<<"$(ldconfig -p 2>/dev/null)"; then
  # Ubuntu 24.04 renamed libfuse2 to libfuse2t64.
  if apt-cache show libfuse2t64 >/dev/null 2>&1; then missing+=(libfuse2t64); else missing+=(libfuse2); fi
fi
if ! command -v fusermount >/dev/null && ! command -v fusermount3 >/dev/null; then missing+=(fuse3); fi
command -v mkfs.ext4 >/dev/null || missing+=(e2fsprogs)
command -v losetup >/dev/null || missing+=(util-linux)
command -v sha256sum >/dev/null || missing+=(coreutils)
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${missing[@]}" >/dev/null
else
  echo "all present (libfuse2, fusermount, e2fsprogs, util-linux)"
fi
[ -e /dev/fuse ] || { modprobe fuse 2>/dev/null || true; }
[ -e /dev/fuse ] || die "/dev/fuse is missing: load the fuse module, or run the container with --device /dev/fuse --cap-add SYS_ADMIN"

# 2. Dependencies and build ------------------------------------------------------
cd "$REPO"
if [ ! -f node_modules/.package-lock.json ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  say "npm ci"
  npm ci --no-audit --no-fund
else
  say "npm dependencies already installed (rm -rf node_modules to force npm ci)"
fi
say "npm run build"
npm run --silent build

# 3. Volume -------------------------------------------------------------------------
STORE=${VBFS_STORE:-$HOME/.local/share/vbfs}
export VBFS_STORE="$STORE"
if "$VBFS" info "$VOLUME" >/dev/null 2>&1; then
  say "volume '$VOLUME' already exists in $STORE"
else
  say "creating volume '$VOLUME' (1 GiB, sparse) in $STORE"
  "$VBFS" create "$VOLUME" --size 1G
fi

# 4. Mount the store -------------------------------------------------------------------
mkdir -p "$MNT" "$EXT"
if mountpoint -q "$MNT" && [ -f "$MNT/$VOLUME" ]; then
  say "store already mounted at $MNT"
else
  say "mounting the store at $MNT"
  "$VBFS" mount "$MNT" --daemon
fi
ls -l "$MNT"

# 5. ext4 on a loop device ----------------------------------------------------------------
LOOP=$(losetup -j "$MNT/$VOLUME" -O NAME -n 2>/dev/null | head -n1 || true)
if [ -z "$LOOP" ]; then
  LOOP=$(losetup -f --show "$MNT/$VOLUME")
  say "attached $MNT/$VOLUME to $LOOP"
fi
if ! blkid "$LOOP" >/dev/null 2>&1; then
  say "creating ext4 on $LOOP"
  mkfs.ext4 -q -F "$LOOP"
fi
if ! mountpoint -q "$EXT"; then
  mount "$LOOP" "$EXT"
fi
say "ext4 on $LOOP is mounted at $EXT"

# 6. Write, sync, read back -------------------------------------------------------------------
say "writing $EXT/hello.txt and 32 MiB of random data, sync, reading back"
echo "hello from vbfs, $(date -u +%FT%TZ)" >"$EXT/hello.txt"
head -c 32M /dev/urandom >"$EXT/random.bin"
WROTE=$(sha256sum <"$EXT/random.bin" | cut -d' ' -f1)
sync
echo 3 >/proc/sys/vm/drop_caches 2>/dev/null || true # read from vbfs, not from the page cache
READ=$(sha256sum <"$EXT/random.bin" | cut -d' ' -f1)
cat "$EXT/hello.txt"
echo "sha256 written: $WROTE"
echo "sha256 read:    $READ"
[ "$WROTE" = "$READ" ] || die "checksums differ"
df -h "$EXT" | tail -n1

# 7. Report ---------------------------------------------------------------------------------
say "live counters (vbfs stats $MNT)"
"$VBFS" stats "$MNT" | sed -n '/^\[/,$p' | head -n 24

CLEANUP="umount $EXT && losetup -d $LOOP && $VBFS unmount $MNT"
if [ "$UNMOUNT" = 1 ]; then
  say "taking it down: $CLEANUP"
  umount "$EXT"
  losetup -d "$LOOP"
  for _ in $(seq 50); do [ -z "$(losetup -j "$MNT/$VOLUME" 2>/dev/null)" ] && break; sleep 0.1; done
  "$VBFS" unmount "$MNT"
  echo "nothing is mounted any more; the volume stays in $STORE (vbfs delete $VOLUME --yes removes it)"
else
  cat <<EOF

What is running now:
  store      $STORE  (vbfs list)
  vbfs mount $MNT  (log: $STORE/mount.log)  ->  $MNT/$VOLUME, a 1 GiB sparse file
  loop       $LOOP  <-  $MNT/$VOLUME
  ext4       $EXT

Take it down in this order (the vbfs unmount refuses while the loop device is attached):
  umount $EXT
  losetup -d $LOOP
  $VBFS unmount $MNT

or run: examples/loop-mount.sh down $EXT && $VBFS unmount $MNT
Run it again with --unmount to have the script do this.
EOF
fi
