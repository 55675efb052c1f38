name=$1; options=$2; keeper=$3; relay=$4; python=$5; command=$6
# The launcher reads these lines before the supervisor's marker. A line that cannot be written
# means the launcher gave up (its session closed): a job we submitted is cancelled then.
trap '' PIPE
job=; created=
say() {
  printf 'sshpyk-slurm %s\n' "$*" && return 0
  if [ -n "$created" ]; then scancel "$job" 2>/dev/null; fi
  exit 1
}
missing=
for c in sbatch srun squeue scancel; do
  command -v "$c" >/dev/null 2>&1 || missing="$missing $c"
done
python=$(relay_python "$python") || missing="$missing python3"
if [ -n "$missing" ]; then say missing $missing; exit 0; fi
set -f
job=$(squeue -h -u "$(id -un)" -n "$name" -t RUNNING -o %i 2>/dev/null </dev/null | head -n 1)
if [ -n "$job" ]; then
  say adopted "$job"
else
  # The user's options are split on blanks (set -f: no globbing).
  if ! out=$(sbatch --parsable --job-name="$name" --output=/dev/null $options --wrap="$keeper" 2>&1 </dev/null); then
    say refused "$(printf '%s\n' "$out" | sed -n 's/^sbatch: error: //p' | tr '\n' '|')"
    exit 0
  fi
  job=${out%%;*}
  created=1
  say submitted "$job"
fi
last=
while :; do
  state=$(squeue -h -j "$job" -o '%T|%r|%N' 2>/dev/null </dev/null)
  case $state in
    RUNNING*) say running "$job" "${state##*|}"; break ;;
    PENDING*|CONFIGURING*)
      if [ "$state" != "$last" ]; then
        reason=${state#*|}; say pending "$job" "${reason%%|*}"; last=$state
      else
        say waiting "$job"
      fi ;;
    *) say ended "$job" "${state%%|*}"; exit 0 ;;
  esac
  sleep 1
done
# The relay owns the step's stdio, so that the step outlives this ssh session.
exec "$python" -S -c "$relay" "$job" srun --jobid="$job" --overlap --ntasks=1 --unbuffered /bin/sh -c "$command"
