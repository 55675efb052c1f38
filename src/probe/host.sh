probe=$1; shift
echo "sshpyk-uname $(uname -a)"
while [ $# -ge 2 ]; do
  py=$1; cwd=$2; shift 2
  case $py in "~/"*) exe=$HOME/${py#"~/"};; */*) exe=$py;; *) exe=$(command -v "$py") || exe=;; esac
  if [ -n "$exe" ] && [ -d "$exe" ]; then out=directory
  elif [ -n "$exe" ] && [ -x "$exe" ]; then out=$("$exe" -c "$probe" "$cwd" 2>&1 | tr '\n' ' '); else out=missing; fi
  printf 'sshpyk-python\t%s\t%s\t%s\n' "$py" "$cwd" "$out"
done
