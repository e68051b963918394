#!/bin/bash
# Submit an hbl_mpi run to PBS Pro with mpiexec (MPICH/Cray PALS/Intel MPI or Open MPI).
#
#   CONFIG=run.toml NODES=2 RANKS_PER_NODE=4 WALLTIME=2:00 jobs/pbs.sh [--dry-run] [--now] [-- ARGS]
#
# Starts `mpiexec -n NODES*RANKS_PER_NODE -ppn RANKS_PER_NODE` (Open MPI: --map-by
# ppr:RANKS_PER_NODE:node): rank 0 is the scheduler, ranks 1.. are the workers; every
# worker binds GPU local_rank % GPUs it sees. Without --now the script writes a job
# script and pipes it to `qsub`; --now runs mpiexec directly (inside `qsub -I` or a job;
# NODES then defaults to the hosts in PBS_NODEFILE).
#
# Required:  CONFIG (TOML file), NODES, RANKS_PER_NODE (defaults to GPUS_PER_NODE when
#            that is set); to submit also WALLTIME (minutes, H:MM or H:MM:SS).
# Optional:  OUT (output directory), RESTART=1 (--restart), OVERWRITE=1 (--overwrite),
#            ACCOUNT or PROJECT (-A), QUEUE (-q), JOB_NAME (hbl_mpi),
#            GPUS_PER_NODE (select ...:ngpus=), CPUS_PER_RANK (select ...:ncpus=
#            RANKS_PER_NODE*CPUS_PER_RANK), PBS_RESOURCES (replaces the whole
#            "select=..." resource request, e.g. Torque's "nodes=2:ppn=4"),
#            MPIEXEC (mpiexec), MPI_FLAVOR (mpich or openmpi; default: asks
#            `$MPIEXEC --version`), PYTHON (python3 on PATH), DEVICE (--set device=),
#            THREADS (--set threads=), GROUP_SIZE (--set group_size=), CUDA_AWARE
#            (1: MPICH_GPU_SUPPORT_ENABLED=1 and GPU-to-GPU sends; 0: host staging;
#            auto: hbl_mpi asks the MPI library), EXTRA_ARGS (more hbl_mpi arguments,
#            split on spaces; or put them after --), LAUNCHER_ARGS (more mpiexec
#            arguments), SUBMIT_ARGS (more qsub arguments), EXTRA_DIRECTIVES (more #PBS
#            lines, one per line, e.g. "-l filesystems=home"), JOB_SETUP (shell code run
#            in the job first). The job gets the submitting environment (#PBS -V).
# DRY_RUN=1 or --dry-run prints the submission (or, with --now, the mpiexec line) only.
# Exit 2 on a missing or malformed variable. Details: docs/launching.md.
set -euo pipefail
HBL_SCRIPT=jobs/pbs.sh
ALLOW_NOW=1
# shellcheck source=jobs/_common.sh
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"
hbl_parse_args "$@"

if ((HBL_NOW)) && [[ -z ${NODES:-} && -r ${PBS_NODEFILE:-} ]]; then
    NODES=$(sort -u "$PBS_NODEFILE" | wc -l)
    NODES=${NODES//[[:space:]]/}
fi
hbl_node_ranks

MPIEXEC=${MPIEXEC:-mpiexec}
if [[ -z ${MPI_FLAVOR:-} ]]; then
    # Open MPI's mpiexec has no -ppn; MPICH's hydra, Cray PALS and Intel MPI all take it.
    MPI_FLAVOR=mpich
    if command -v "$MPIEXEC" >/dev/null && "$MPIEXEC" --version 2>&1 | grep -qiE 'open ?mpi|open ?rte'; then
        MPI_FLAVOR=openmpi
    fi
fi
case $MPI_FLAVOR in
    mpich) PPN=(-ppn "$RANKS_PER_NODE") ;;
    openmpi) PPN=(--map-by "ppr:$RANKS_PER_NODE:node") ;;
    *) hbl_die "MPI_FLAVOR='$MPI_FLAVOR': expected mpich or openmpi" ;;
esac

[[ ${CUDA_AWARE:-} == 1 ]] && HBL_RANK_ENV+=(MPICH_GPU_SUPPORT_ENABLED=1)
hbl_build_run
hbl_words LAUNCHER_ARGS
LAUNCH=("$MPIEXEC" -n "$TOTAL" "${PPN[@]}" ${HBL_WORDS[@]+"${HBL_WORDS[@]}"} "${HBL_RUN[@]}")

if ((HBL_NOW)); then
    hbl_launch "${LAUNCH[@]}"
fi

hbl_batch_settings
printf -v WALL_PBS '%02d:%02d:00' $((HBL_WALL_MIN / 60)) $((HBL_WALL_MIN % 60))
if [[ -z ${PBS_RESOURCES:-} ]]; then
    PBS_RESOURCES="select=$NODES:mpiprocs=$RANKS_PER_NODE"
    [[ -n ${CPUS_PER_RANK:-} ]] && PBS_RESOURCES+=":ncpus=$((RANKS_PER_NODE * CPUS_PER_RANK))"
    [[ ${GPUS_PER_NODE:-0} != 0 ]] && PBS_RESOURCES+=":ngpus=$GPUS_PER_NODE"
fi
HBL_DIRECTIVES="-N $JOB_NAME
-l $PBS_RESOURCES
-l walltime=$WALL_PBS
-j oe
-V"
[[ -n $ACCOUNT ]] && HBL_DIRECTIVES+=$'\n'"-A $ACCOUNT"
[[ -n ${QUEUE:-} ]] && HBL_DIRECTIVES+=$'\n'"-q $QUEUE"
hbl_job_script '#PBS' "${LAUNCH[@]}"
hbl_submit qsub
