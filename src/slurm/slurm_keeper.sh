# The allocation's batch script, on the node: it holds the allocation while kernel steps run
# and for @GRACE@ s after the last one ended (a restart adopts it meanwhile), then ends it.
idle=0
while [ "$idle" -lt @GRACE@ ]; do
  sleep 1
  if squeue -h -s -j "$SLURM_JOB_ID" -o %i 2>/dev/null | grep -q '\.[0-9][0-9]*$'; then
    idle=0
  else
    idle=$((idle + 1))
  fi
done
