py=$1; shift
case $py in "~/"*) py=$HOME/${py#"~/"};; */*) ;; *) py=$(command -v "$py") || py=;; esac
if [ -z "$py" ] || [ ! -x "$py" ]; then echo sshpyk-no-python; exit 0; fi
exec "$py" "$@"
