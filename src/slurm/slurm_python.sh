# relay_python PYTHON: the python that runs the relay (slurm_relay.py) on the login node: the
# kernel's python when the login node has it (a shared file system), else python3; fails when
# neither is there. slurm.sh and slurm_commands.sh (for `sshpyk list`) share this rule.
relay_python() {
  case $1 in "~/"*) p=$HOME/${1#"~/"};; */*) p=$1;; *) p=$(command -v "$1") || p=;; esac
  if [ -z "$p" ] || [ ! -x "$p" ]; then p=$(command -v python3) || return 1; fi
  printf '%s\n' "$p"
}
