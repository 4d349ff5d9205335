#!/usr/bin/env bash
# Put a filesystem on a vbfs volume file through a loop device, and take it down
# again in the only safe order.
#
#   examples/loop-mount.sh up   <mnt>/<volume> <dir> [--mkfs]   # losetup + (mkfs.ext4) + mount
#   examples/loop-mount.sh down <dir>                           # umount + losetup -d
#
# Down before `vbfs unmount`: the vbfs mount refuses to go away while a loop device
# still uses one of its files, because a FUSE process that exits under a loop device
# turns every later write of the filesystem on it into an I/O error.
set -euo pipefail

die() { echo "loop-mount.sh: $*" >&2; exit 1; }
[ "$(id -u)" -eq 0 ] || die "needs root (losetup, mount)"

case "${1:-}" in
up)
  file=${2:-}; dir=${3:-}; mkfs=${4:-}
  [ -n "$file" ] && [ -n "$dir" ] || die "usage: $0 up <volume-file> <dir> [--mkfs]"
  [ -f "$file" ] || die "$file is not a file: is the store mounted (vbfs mount)?"
  if existing=$(losetup -j "$file" -O NAME -n 2>/dev/null | head -n1) && [ -n "$existing" ]; then
    loop=$existing
    echo "reusing $loop (already attached to $file)"
  else
    loop=$(losetup -f --show "$file")
    echo "attached $file to $loop"
  fi
  if [ "$mkfs" = "--mkfs" ] || ! blkid "$loop" >/dev/null 2>&1; then
    echo "creating ext4 on $loop"
    mkfs.ext4 -q -F "$loop"
  fi
  mkdir -p "$dir"
  if ! mountpoint -q "$dir"; then mount "$loop" "$dir"; fi
  echo "mounted $loop on $dir"
  echo "take it down with: $0 down $dir"
  ;;
down)
  dir=${2:-}
  [ -n "$dir" ] || die "usage: $0 down <dir>"
  loop=$(findmnt -n -o SOURCE --target "$dir" 2>/dev/null || true)
  mountpoint -q "$dir" || die "$dir is not mounted"
  sync -f "$dir"
  umount "$dir"
  echo "unmounted $dir"
  case "$loop" in
  /dev/loop*) losetup -d "$loop"; echo "detached $loop" ;;
  *) echo "($dir was not on a loop device: $loop)" ;;
  esac
  ;;
*)
  die "usage: $0 up <volume-file> <dir> [--mkfs] | down <dir>"
  ;;
esac
