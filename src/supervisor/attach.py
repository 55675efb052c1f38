# Run with `python -S -c` in a new session after a reconnection: hands this session's stdin and
# stdout (and its parent pid, from which the supervisor finds the connection's sshd) to the
# supervisor listening at argv[1], then stays until the supervisor lets go of the session (sshd
# stops forwarding stdin once its command exits). Exits with 3 when nothing listens there: the
# supervisor is gone.
import array, os, socket, sys
s = socket.socket(socket.AF_UNIX)
try:
    s.connect(sys.argv[1])
except OSError:
    sys.exit(3)
s.sendmsg([str(os.getppid()).encode()], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [0, 1]))])
null = os.open(os.devnull, os.O_RDWR)
os.dup2(null, 0)
os.dup2(null, 1)
s.recv(1)
