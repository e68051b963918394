#!/bin/bash
# Run hbl_mpi on one machine with mpiexec.
#
#   CONFIG=jobs/demo.toml RANKS=4 jobs/workstation.sh [--dry-run] [-- ARGS]
#
# Starts `mpiexec -n RANKS python -m hbl_mpi run CONFIG ...`: rank 0 is the scheduler
# (it sleeps while it waits, so it needs no core of its own), ranks 1..RANKS-1 are the
# workers; with GPUs each worker binds GPU local_rank % GPUs.
#
# Required:  CONFIG (TOML file).
# Optional:  RANKS (default: 1 + the visible GPUs; without GPUs 1 + the cores, at most
#            1 + 8), OUT (output directory), RESTART=1 (--restart), OVERWRITE=1
#            (--overwrite), MPIEXEC (default: the mpiexec next to PYTHON, i.e. the pip
#            `mpich` wheel's in a venv, else mpiexec on PATH), PYTHON (python3 on PATH),
#            DEVICE (--set device=), THREADS (--set threads=), GROUP_SIZE (--set
#            group_size=; must divide RANKS-1), CUDA_AWARE (1: GPU-to-GPU sends; 0: host
#            staging; auto: hbl_mpi asks the MPI library), EXTRA_ARGS (more hbl_mpi
#            arguments, split on spaces; or put them after --), LAUNCHER_ARGS (more
#            mpiexec arguments, e.g. --oversubscribe for Open MPI).
# DRY_RUN=1 or --dry-run prints the mpiexec line only.
# Exit 2 on a missing or malformed variable; otherwise hbl_mpi's own exit status.
set -euo pipefail
HBL_SCRIPT=jobs/workstation.sh
# shellcheck source=jobs/_common.sh
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"
hbl_parse_args "$@"

# Count GPUs the way the ranks will see them: CUDA_VISIBLE_DEVICES first, then nvidia-smi.
visible_gpus() {
    local ids
    if [[ -n ${CUDA_VISIBLE_DEVICES+x} ]]; then
        IFS=, read -r -a ids <<<"$CUDA_VISIBLE_DEVICES"
        echo "${#ids[@]}"
    elif command -v nvidia-smi >/dev/null; then
        nvidia-smi -L 2>/dev/null | grep -c '^GPU ' || true
    else
        echo 0
    fi
}

if [[ -z ${RANKS:-} ]]; then
    gpus=$(visible_gpus)
    if ((gpus > 0)); then
        RANKS=$((1 + gpus))
    else
        cores=$(nproc 2>/dev/null || echo 1)
        RANKS=$((1 + (cores < 8 ? cores : 8)))
        ((RANKS >= 2)) || RANKS=2
    fi
    hbl_note "RANKS=$RANKS (1 scheduler + $((RANKS - 1)) workers; set RANKS to choose)"
fi
hbl_posint RANKS
((RANKS >= 2)) || hbl_die "RANKS=$RANKS: hbl_mpi needs at least 2 ranks (rank 0 schedules; use 'run --serial' for one process)"
hbl_check_groups "$RANKS" "$RANKS"

hbl_build_run
if [[ -z ${MPIEXEC:-} ]]; then
    MPIEXEC=mpiexec
    [[ $PYTHON == */* && -x ${PYTHON%/*}/mpiexec ]] && MPIEXEC=${PYTHON%/*}/mpiexec
fi
hbl_words LAUNCHER_ARGS
hbl_launch "$MPIEXEC" -n "$RANKS" ${HBL_WORDS[@]+"${HBL_WORDS[@]}"} "${HBL_RUN[@]}"
