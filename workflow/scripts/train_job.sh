#!/usr/bin/env bash
# One training job of the workflow (workflow/rules/train.smk):
#   workflow/scripts/train_job.sh ATTEMPT LOG COMMAND...
# runs COMMAND (`mae <stage> --config FILE --out DIR`, or mae.launch around it) with its stdout and
# stderr in LOG, and exits with its exit code. Two exit codes get more:
#
# Exit 2 is a user error: running again cannot succeed. The job leaves LOG.exit2, and a retry of the
# same Snakemake invocation (ATTEMPT > 1) stops at once with exit 2 instead of running COMMAND again.
# A new invocation (ATTEMPT 1) always runs it.
#
# Exit 75 means `mae` checkpointed at a stop signal. Inside a RUNNING SLURM job the job requeues itself
# (`scontrol requeue`, allowed by the rule's --requeue) and the next allocation resumes from
# checkpoint.pth: a run longer than the time limit is a chain of allocations of one SLURM job, and
# Snakemake's retries are not spent (the executor plugin sees REQUEUED / PENDING / RUNNING, states it
# waits on, and one COMPLETED at the end). Measured on SLURM 22.05: the requeued job is eligible again
# cred_expire seconds later (AuthInfo, default 120 s) and then waits for a scheduling pass. A SIGTERM of
# scancel, of the time limit or of an outside requeue leaves the job COMPLETING (measured): requeueing
# then would bring back a cancelled job or duplicate the retry of a timed-out one, so only a RUNNING job
# requeues. Outside SLURM, or when SLURM refuses, exit 75 goes to Snakemake's retries, which resume the
# same way.
#
# Stop signals: inside SLURM the rule's shell ignores USR1 and TERM (workflow/rules/common.smk), this
# script inherits that, and `mae` installs its own handlers.
set -uo pipefail

if [ $# -lt 3 ]; then
    echo "usage: $0 ATTEMPT LOG COMMAND..." >&2
    exit 2
fi
attempt=$1 log=$2
shift 2

if [ "$attempt" -gt 1 ] && [ -f "$log.exit2" ]; then
    echo "not retried: the previous attempt exited 2 (user error), see $log" >&2
    exit 2
fi
rm -f "$log.exit2"

"$@" > "$log" 2>&1
code=$?
if [ $code -eq 2 ]; then
    touch "$log.exit2"
fi
if [ $code -eq 75 ] && [ -n "${SLURM_JOB_ID:-}" ] && [ "$(squeue -h -j "$SLURM_JOB_ID" -o %T)" = RUNNING ]; then
    echo "exit 75: requeueing SLURM job $SLURM_JOB_ID, the next allocation resumes" >> "$log"
    scontrol requeue "$SLURM_JOB_ID" >> "$log" 2>&1 || true
fi
exit $code
