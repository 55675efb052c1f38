# For each Slurm command named in "$@": its path, or that it is missing, on the PATH that
# slurm.sh has on the login node (a plain ssh session, no login shell).
for name in "$@"; do
  if path=$(command -v "$name" 2>/dev/null); then
    printf 'sshpyk-slurm-command %s %s\n' "$name" "$path"
  else
    printf 'sshpyk-slurm-command %s\n' "$name"
  fi
done
