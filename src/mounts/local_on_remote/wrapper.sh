# The mount wrapper around the remote's sshfs (see wrapper.rs), run after wrapper_functions.sh
# and wrapper_states_dir.sh. $1 mode (passive|alias), $2 mount point, $3 sshfs ("" = PATH),
# $4 source, $5 -o options, $6 takeover ("1": end this kernel's earlier sshfs there first).
mode=$1 mnt=$2 want=$3 src=$4 opts=$5 takeover=$6 states=
trap '' HUP PIPE
tag() { printf 'sshpyk-mount %s\n' "$*" >&2; }
fail() { tag error "$@"; rmdir "$states" 2>/dev/null; exit 0; }
is_mounted() {
  if command -v mountpoint >/dev/null 2>&1; then mountpoint -q "$1" 2>/dev/null; return; fi
  mount 2>/dev/null | grep -F " on $1 " >/dev/null
}
is_dead() { LC_ALL=C ls -d "$1" 2>&1 >/dev/null | grep 'not connected' >/dev/null; }
unmount() {
  for u in fusermount3 fusermount; do
    if command -v $u >/dev/null 2>&1 && $u -u -z "$1" 2>/dev/null; then return 0; fi
  done
  umount -l "$1" 2>/dev/null || umount "$1" 2>/dev/null
}
case $mnt in "~/"*) mnt=$HOME/${mnt#"~/"};; esac
sshfs=$(find_sshfs "$want") || sshfs=
if [ -z "$sshfs" ]; then
  if [ -z "$want" ]; then fail no-sshfs "sshfs is not on the remote PATH ($PATH)"; fi
  fail no-sshfs "$want does not exist or is not executable"
fi
why=$(fuse_check) || fail no-fuse "$why"
# Who serves this mount point: "wrapper-pid sshfs-pid created-top-dir", in a private dir.
states=${TMPDIR:-/tmp}/sshpyk-mounts-$(id -u)
states_dir "$states" || fail state "$states is not a private directory of $(id -un) (a directory, not a symlink, with mode 0700); remove it"
state=$states/$(printf %s "$mnt" | cksum | cut -d' ' -f1)
save_state() {
  # Another mount's cleanup may have just removed the (then empty) directory.
  tries=0
  until { states_dir "$states" && echo "$*" > "$state"; } 2>/dev/null; do
    tries=$((tries + 1)); [ $tries -lt 5 ] || return 1
  done
}
top=
if [ -n "$takeover" ] && [ -f "$state" ]; then
  # Reconnected after a network drop: the previous sshfs of this kernel hangs on a dead
  # channel. Claim the mount point first, so that its wrapper leaves the cleanup to us.
  read -r old_wrapper old_sshfs top < "$state"
  save_state "$$ - $top"
  kill -TERM "$old_sshfs" 2>/dev/null
  n=0
  while kill -0 "$old_sshfs" 2>/dev/null && [ $n -lt 30 ]; do sleep 0.1; n=$((n + 1)); done
  kill -KILL "$old_sshfs" 2>/dev/null
  if is_mounted "$mnt" || is_dead "$mnt"; then unmount "$mnt"; fi
fi
n=0 removed=
while :; do
  # A mount whose sshfs died shows as dead only once FUSE's cached attributes expire: look
  # again on every turn.
  if is_dead "$mnt" && unmount "$mnt" && [ -z "$removed" ]; then
    removed=1
    tag note "removed a stale mount left at $mnt by an earlier run"
  fi
  if ! is_mounted "$mnt"; then
    # The cache may have expired just now, between the two looks: then it is dead, not gone.
    is_dead "$mnt" || break
  fi
  # An earlier run's sshfs may be unmounting right now.
  if [ $n -ge 30 ]; then fail busy "$mnt is already a mount point"; fi
  sleep 0.1; n=$((n + 1))
done
if [ -e "$mnt" ] || [ -L "$mnt" ]; then
  [ -d "$mnt" ] || fail not-dir "$mnt exists and is not a directory"
  listing=$(ls -A "$mnt" 2>&1) || fail not-dir "$listing"
  [ -z "$listing" ] || fail not-empty "$mnt is not empty"
else
  d=$mnt
  while [ ! -e "$d" ] && [ ! -L "$d" ]; do top=$d; d=$(dirname "$d"); done
  out=$(mkdir -p "$mnt" 2>&1) || fail mkdir "$out"
fi
cleanup() {
  # No state: it could not be saved, and nobody took over.
  read -r owner _ < "$state" 2>/dev/null || owner=$$
  # Taken over by the wrapper of a reconnected launcher: the mount point is its now.
  [ "$owner" = $$ ] || exit 0
  rm -f "$state"
  rmdir "$states" 2>/dev/null
  if is_mounted "$mnt" || is_dead "$mnt"; then unmount "$mnt"; fi
  if [ -n "$top" ]; then
    d=$mnt
    while rmdir "$d" 2>/dev/null && [ "$d" != "$top" ]; do d=$(dirname "$d"); done
  fi
  tag unmounted
}
exec 3<&0
pid= watch=
trap 'kill -TERM $pid $watch 2>/dev/null' TERM INT
if [ "$mode" = passive ]; then
  printf 'sshpyk-sftp-start\n'
  "$sshfs" -f -o "$opts" "$src" "$mnt" <&3 3<&- &
  pid=$!
else
  "$sshfs" -f -o "$opts" "$src" "$mnt" </dev/null 3<&- &
  pid=$!
  # The session's stdin ends when the launcher does (or lets go): then unmount.
  cat <&3 >/dev/null 2>&1 &
  watch=$!
fi
exec 3<&-
save_state "$$ $pid $top" || tag note "cannot record the mount in $states; a reconnection will not take it over"
ready=
while kill -0 $pid 2>/dev/null; do
  if is_mounted "$mnt"; then ready=1; tag ready; break; fi
  sleep 0.1
done
if [ -n "$watch" ]; then
  while kill -0 $pid 2>/dev/null && kill -0 $watch 2>/dev/null; do sleep 0.5; done
  kill -TERM $pid $watch 2>/dev/null
fi
wait $pid; rc=$?
while kill -0 $pid 2>/dev/null; do wait $pid; rc=$?; done
if [ -z "$ready" ]; then tag error sshfs-failed "sshfs exited with status $rc before the mount was ready"; fi
cleanup
