# `list`'s check on the remote, run after wrapper_functions.sh: is FUSE usable, and where is
# each configured sshfs (the arguments).
if why=$(fuse_check); then echo "sshpyk-fuse ok"; else printf 'sshpyk-fuse no %s\n' "$why"; fi
for s in "$@"; do printf 'sshpyk-sshfs\t%s\t%s\n' "$s" "$(find_sshfs "$s")"; done
