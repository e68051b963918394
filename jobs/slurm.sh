#!/bin/bash
# Submit an hbl_mpi run to Slurm with srun.
#
#   CONFIG=run.toml NODES=2 RANKS_PER_NODE=4 WALLTIME=2:00 jobs/slurm.sh [--dry-run] [--now] [-- ARGS]
#
# Starts `srun -n NODES*RANKS_PER_NODE --ntasks-per-node=RANKS_PER_NODE`: rank 0 is the
# scheduler, ranks 1.. are the workers; every worker binds GPU local_rank % GPUs it sees.
# Without --now the script writes an sbatch script and pipes it to `sbatch`; --now runs
# srun directly (inside salloc or a job; NODES then defaults to SLURM_JOB_NUM_NODES).
#
# Required:  CONFIG (TOML file), NODES, RANKS_PER_NODE (defaults to GPUS_PER_NODE when
#            that is set); to submit also WALLTIME (minutes, H:MM or H:MM:SS).
# Optional:  OUT (output directory), RESTART=1 (--restart), OVERWRITE=1 (--overwrite),
#            ACCOUNT or PROJECT (--account), QUEUE (--partition), JOB_NAME (hbl_mpi),
#            GPUS_PER_NODE (--gpus-per-node), CPUS_PER_RANK (--cpus-per-task),
#            PYTHON (python3 on PATH), DEVICE (--set device=), THREADS (--set threads=),
#            GROUP_SIZE (--set group_size=), CUDA_AWARE (1: MPICH_GPU_SUPPORT_ENABLED=1
#            and GPU-to-GPU sends; 0: host staging; auto: hbl_mpi asks the MPI library),
#            EXTRA_ARGS (more hbl_mpi arguments, split on spaces; or put them after --),
#            LAUNCHER_ARGS (more srun arguments, e.g. --mpi=pmix), SUBMIT_ARGS (more
#            sbatch arguments), EXTRA_DIRECTIVES (more #SBATCH lines, one per line, e.g.
#            "--constraint=gpu"), JOB_SETUP (shell code run in the job first).
# DRY_RUN=1 or --dry-run prints the submission (or, with --now, the srun line) only.
# Exit 2 on a missing or malformed variable. Details: docs/launching.md.
set -euo pipefail
HBL_SCRIPT=jobs/slurm.sh
ALLOW_NOW=1
# shellcheck source=jobs/_common.sh
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"
hbl_parse_args "$@"

((HBL_NOW)) && NODES=${NODES:-${SLURM_JOB_NUM_NODES:-}}
hbl_node_ranks

[[ ${CUDA_AWARE:-} == 1 ]] && HBL_RANK_ENV+=(MPICH_GPU_SUPPORT_ENABLED=1)
hbl_build_run
hbl_words LAUNCHER_ARGS
LAUNCH=(srun -n "$TOTAL" --ntasks-per-node="$RANKS_PER_NODE")
# srun does not inherit sbatch's --cpus-per-task (Slurm >= 22.05): pass it on explicitly.
[[ -n ${CPUS_PER_RANK:-} ]] && LAUNCH+=(--cpus-per-task="$CPUS_PER_RANK")
LAUNCH+=(${HBL_WORDS[@]+"${HBL_WORDS[@]}"} "${HBL_RUN[@]}")

if ((HBL_NOW)); then
    hbl_launch "${LAUNCH[@]}"
fi

hbl_batch_settings
printf -v WALL_SLURM '%d:%02d:00' $((HBL_WALL_MIN / 60)) $((HBL_WALL_MIN % 60))
HBL_DIRECTIVES="--job-name=$JOB_NAME
--nodes=$NODES
--ntasks-per-node=$RANKS_PER_NODE
--time=$WALL_SLURM
--output=$JOB_NAME-%j.out"
[[ -n $ACCOUNT ]] && HBL_DIRECTIVES+=$'\n'"--account=$ACCOUNT"
[[ -n ${QUEUE:-} ]] && HBL_DIRECTIVES+=$'\n'"--partition=$QUEUE"
[[ ${GPUS_PER_NODE:-0} != 0 ]] && HBL_DIRECTIVES+=$'\n'"--gpus-per-node=$GPUS_PER_NODE"
[[ -n ${CPUS_PER_RANK:-} ]] && HBL_DIRECTIVES+=$'\n'"--cpus-per-task=$CPUS_PER_RANK"
hbl_job_script '#SBATCH' "${LAUNCH[@]}"
hbl_submit sbatch
