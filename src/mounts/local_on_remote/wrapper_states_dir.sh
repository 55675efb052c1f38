# states_dir DIR: DIR made private, else refused unless it already is (why: STATES_DIR in
# wrapper.rs).
states_dir() {
  mkdir -m 700 "$1" 2>/dev/null
  [ -d "$1" ] && [ ! -L "$1" ] && [ -O "$1" ] || return 1
  case $(LC_ALL=C ls -ld "$1") in "drwx------ "*|"drwx------."*) ;; *) return 1 ;; esac
}
