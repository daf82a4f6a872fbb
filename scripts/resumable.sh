#!/usr/bin/env bash
# Run a resumable gaugeflow command inside a batch job and requeue the job when it is stopped.
#
#   scripts/resumable.sh gaugeflow hmc ... --resume
#
# The batch system's warning signal (Slurm: --signal=B:USR1@120; also SIGTERM) is forwarded
# to the command, which saves its state and exits with status 3; the job is then requeued
# (Slurm: scontrol requeue) so that the same command, with --resume, continues it.  bash runs
# traps only between foreground commands, so the command runs in the background and we wait.
set -uo pipefail

"$@" &
child=$!
forward() { kill -s "$1" "$child" 2>/dev/null || true; }
trap 'forward USR1' USR1
trap 'forward TERM' TERM

status=0
while true; do
    wait "$child"
    status=$?
    # wait returns 128+signal when a trapped signal interrupted it; the child is still running
    if kill -0 "$child" 2>/dev/null; then continue; fi
    break
done

if [ "$status" -eq 3 ]; then
    echo "resumable.sh: stopped cleanly; requeueing to resume" >&2
    if [ -n "${SLURM_JOB_ID:-}" ]; then
        scontrol requeue "$SLURM_JOB_ID"
    elif [ -n "${PBS_JOBID:-}" ]; then
        qrerun "$PBS_JOBID"
    fi
fi
exit "$status"
