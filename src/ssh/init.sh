echo sshpyk-init-begin
{
@SNIPPET@
} </dev/null 2>&1
sshpyk_status=$?
if [ "$sshpyk_status" -ne 0 ]; then echo "sshpyk-init-failed $sshpyk_status"; exit 0; fi
echo sshpyk-init-ok
