#!/bin/bash
# PrologSlurmctld and EpilogSlurmctld hook: tells grid supervisors at once that a job was allocated
# or ended, so they look at Slurm now rather than at their next poll (README, "Slurm layer").
#
# Install it where slurmctld can run it (for example /etc/slurm/grid-wakeup.sh, mode 0755) and set
#   PrologSlurmctld=/etc/slurm/grid-wakeup.sh
#   EpilogSlurmctld=/etc/slurm/grid-wakeup.sh
# in slurm.conf. It sends one UDP datagram, "<job id> <job name>", to each host:port listed in the
# file beside it named like it with .targets (/etc/slurm/grid-wakeup.targets), one per line: the
# supervisors' [slurm] wakeup_listen. It never fails and never waits, so it can neither hold nor
# requeue a job: a lost datagram only means the supervisor sees the change at its next poll.
targets="${0%.sh}.targets"
[ -r "$targets" ] || exit 0
id="${SLURM_JOB_ID:-}"
name="${SLURM_JOB_NAME:-}"
name="${name:0:200}"
[[ "$id" =~ ^[0-9]+$ && "$name" =~ ^[^[:space:]]+$ ]] || exit 0
while IFS= read -r target || [ -n "$target" ]; do
    [[ "$target" =~ ^([A-Za-z0-9.-]+):([0-9]{1,5})$ ]] || continue
    printf '%s %s\n' "$id" "$name" 2>/dev/null >"/dev/udp/${BASH_REMATCH[1]}/${BASH_REMATCH[2]}" || true
done <"$targets"
exit 0
