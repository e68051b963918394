#!/bin/bash
# Submit an hbl_mpi run to LSF with jsrun (Summit-class nodes: 6 GPUs, 42 cores).
#
#   CONFIG=run.toml NODES=2 WALLTIME=2:00 PROJECT=abc123 jobs/lsf.sh [--dry-run] [--now] [-- ARGS]
#
# One resource set per rank: `jsrun -n RANKS_PER_NODE*NODES -r RANKS_PER_NODE -a 1
# -g GPUS_PER_RANK -c CORES_PER_RANK -b rs`, so every rank sees exactly its own GPU.
# Rank 0 is the scheduler and takes one resource set (its GPU stays idle); ranks 1..
# are the workers. Without --now the script writes a batch script and pipes it to
# `bsub`; --now runs jsrun directly (inside `bsub -Is` or an existing allocation).
#
# Required:  CONFIG (TOML file), NODES; to submit also WALLTIME (minutes, H:MM or
#            H:MM:SS) and PROJECT (LSF -P).
# Optional:  OUT (output directory), RESTART=1 (--restart), OVERWRITE=1 (--overwrite),
#            QUEUE (-q), JOB_NAME (hbl_mpi), RANKS_PER_NODE (6), GPUS_PER_RANK (1),
#            CORES_PER_RANK (7), PYTHON (python3 on PATH), DEVICE (--set device=),
#            THREADS (--set threads=), GROUP_SIZE (--set group_size=),
#            CUDA_AWARE (1: jsrun --smpiargs=-gpu and GPU-to-GPU sends; otherwise host
#            staging, because Spectrum MPI takes device pointers only with -gpu),
#            EXTRA_ARGS (more hbl_mpi arguments, split on spaces; or put them after --),
#            LAUNCHER_ARGS (more jsrun arguments), SUBMIT_ARGS (more bsub arguments),
#            EXTRA_DIRECTIVES (more #BSUB lines, one per line, e.g. "-alloc_flags smt4"),
#            JOB_SETUP (shell code run in the job first: module load, venv activation).
# DRY_RUN=1 or --dry-run prints the submission (or, with --now, the jsrun line) only.
# Exit 2 on a missing or malformed variable. Details: docs/launching.md.
set -euo pipefail
HBL_SCRIPT=jobs/lsf.sh
ALLOW_NOW=1
# shellcheck source=jobs/_common.sh
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"
hbl_parse_args "$@"

hbl_require NODES "the number of nodes, e.g. NODES=2"
hbl_posint NODES
RANKS_PER_NODE=${RANKS_PER_NODE:-6}
GPUS_PER_RANK=${GPUS_PER_RANK:-1}
CORES_PER_RANK=${CORES_PER_RANK:-7}
hbl_posint RANKS_PER_NODE
hbl_nonnegint GPUS_PER_RANK
hbl_posint CORES_PER_RANK
TOTAL=$((NODES * RANKS_PER_NODE))
((TOTAL >= 2)) || hbl_die "NODES*RANKS_PER_NODE = $TOTAL: hbl_mpi needs at least 2 ranks (rank 0 schedules)"
hbl_check_groups "$TOTAL" "$RANKS_PER_NODE"

SMPI=()
case ${CUDA_AWARE:-auto} in
    1) SMPI=(--smpiargs=-gpu) ;;
    0 | auto | '') CUDA_AWARE=0 ;;
    *) ;;  # hbl_build_run names the bad value
esac
hbl_build_run
hbl_words LAUNCHER_ARGS
LAUNCH=(jsrun -n "$TOTAL" -r "$RANKS_PER_NODE" -a 1 -g "$GPUS_PER_RANK" -c "$CORES_PER_RANK" -b rs
    ${SMPI[@]+"${SMPI[@]}"} ${HBL_WORDS[@]+"${HBL_WORDS[@]}"} "${HBL_RUN[@]}")

if ((HBL_NOW)); then
    hbl_launch "${LAUNCH[@]}"
fi

hbl_require WALLTIME "the job's time limit, e.g. WALLTIME=2:00"
hbl_require PROJECT "the LSF project to charge (-P), e.g. PROJECT=abc123"
hbl_walltime
JOB_NAME=${JOB_NAME:-hbl_mpi}
hbl_token JOB_NAME
hbl_token PROJECT
hbl_token QUEUE
printf -v WALL_LSF '%d:%02d' $((HBL_WALL_MIN / 60)) $((HBL_WALL_MIN % 60))
HBL_DIRECTIVES="-P $PROJECT
-W $WALL_LSF
-nnodes $NODES
-J $JOB_NAME
-o $JOB_NAME.%J.out
-e $JOB_NAME.%J.err"
[[ -n ${QUEUE:-} ]] && HBL_DIRECTIVES+=$'\n'"-q $QUEUE"
hbl_job_script '#BSUB' "${LAUNCH[@]}"
hbl_submit bsub
