# fuse_check and find_sshfs, which the mount wrapper (wrapper.sh) and `list`'s probe
# (wrapper_probe.sh) share. See wrapper.rs.
fuse_check() {
  if [ ! -e /dev/fuse ]; then echo "/dev/fuse does not exist (load the fuse kernel module)"; return 1; fi
  if ! (exec 3<>/dev/fuse) 2>/dev/null; then echo "/dev/fuse cannot be opened by user $(id -un)"; return 1; fi
  if [ "$(id -u)" != 0 ] && ! command -v fusermount3 >/dev/null 2>&1 && ! command -v fusermount >/dev/null 2>&1; then
    echo "neither fusermount3 nor fusermount is installed (package fuse3)"; return 1
  fi
}
find_sshfs() {
  case $1 in
    "") command -v sshfs 2>/dev/null ;;
    "~/"*) p=$HOME/${1#"~/"}; [ -x "$p" ] && echo "$p" ;;
    *) [ -x "$1" ] && echo "$1" ;;
  esac
}
