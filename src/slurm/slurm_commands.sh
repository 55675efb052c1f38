# For each Slurm command named in "$@" up to "--": its path, or that it is missing, on the PATH
# that slurm.sh has on the login node (a plain ssh session, no login shell); then for each
# kernel python after "--", in order, the python that would run its relay there (relay_python),
# or nothing.
while [ $# -gt 0 ]; do
  name=$1; shift
  [ "$name" = -- ] && break
  if path=$(command -v "$name" 2>/dev/null); then
    printf 'sshpyk-slurm-command %s %s\n' "$name" "$path"
  else
    printf 'sshpyk-slurm-command %s\n' "$name"
  fi
done
for python in "$@"; do
  if path=$(relay_python "$python"); then
    printf 'sshpyk-slurm-relay-python %s\n' "$path"
  else
    printf 'sshpyk-slurm-relay-python\n'
  fi
done
