# Run with `python -u -c`: reads the supervisor's source from stdin (a 12-digit length, then
# the source) and runs it. Unbuffered reads: the frames that follow stay in the pipe for it.
import os
def take(n, got=b""):
    while len(got) < n:
        more = os.read(0, n - len(got))
        if not more:
            raise SystemExit(0)
        got += more
    return got
exec(compile(take(int(take(12))), "sshpyk-supervisor", "exec"))
