# shellcheck shell=bash
# Shared by the hbl_mpi launch scripts (jobs/lsf.sh, slurm.sh, pbs.sh, workstation.sh).
#
# Why one library: the four launchers must agree on what CONFIG, OUT, RESTART,
# EXTRA_ARGS ... mean, on how a missing variable is reported (one line, exit 2, the
# same contract as `python -m hbl_mpi`), and on how a command is printed in dry-run
# mode (shell-quoted, so the printed line can be pasted back into a shell).
# Sourced, never run; needs bash >= 4 (arrays, [[ =~ ]], printf -v, ${v,,}). Arrays that
# may be empty are expanded as ${a[@]+"${a[@]}"}: bash < 4.4 calls a plain "${a[@]}" of an
# empty array unbound under set -u (Summit's login nodes run bash 4.2).

HBL_DRY_RUN=0   # 1: print what would run or be submitted, run nothing
HBL_NOW=0       # 1 (batch scripts): launch now, inside an existing allocation
HBL_PASS=()     # arguments after `--`: appended to the hbl_mpi command unchanged
HBL_RANK_ENV=() # VAR=value set for every rank (launcher-specific ones added by each script)
HBL_SCRIPT=${HBL_SCRIPT:-hbl_mpi job}

hbl_die() {
    printf '%s: error: %s\n' "$HBL_SCRIPT" "$*" >&2
    exit 2
}

hbl_note() {
    printf '%s: %s\n' "$HBL_SCRIPT" "$*" >&2
}

# The comment block at the top of the calling script is its manual.
hbl_usage() {
    sed -n '2,/^[^#]/{/^#/s/^# \{0,1\}//p;}' "$0"
}

# hbl_parse_args [--dry-run] [--now] [-h|--help] [-- HBL_MPI_ARGS...]
# ALLOW_NOW=1 in the caller enables --now (batch-system scripts only).
hbl_parse_args() {
    while (($#)); do
        case $1 in
            --dry-run) HBL_DRY_RUN=1 ;;
            --now)
                [[ ${ALLOW_NOW:-0} == 1 ]] || hbl_die "--now is only for the batch-system scripts"
                # shellcheck disable=SC2034  # read by the sourcing script
                HBL_NOW=1 ;;
            -h | --help) hbl_usage; exit 0 ;;
            --) shift; HBL_PASS=("$@"); break ;;
            *) hbl_die "unknown argument '$1' (options: --dry-run${ALLOW_NOW:+ --now} --help; put hbl_mpi arguments after --)" ;;
        esac
        shift
    done
    hbl_bool DRY_RUN
    [[ $REPLY == 1 ]] && HBL_DRY_RUN=1
    return 0
}

# hbl_bool NAME: REPLY=1 or 0 from the variable NAME (1/true/yes/on or 0/false/no/off/empty).
hbl_bool() {
    local v=${!1:-}
    case ${v,,} in
        1 | true | yes | on) REPLY=1 ;;
        '' | 0 | false | no | off) REPLY=0 ;;
        *) hbl_die "$1='$v': expected 1 or 0" ;;
    esac
}

# hbl_require NAME WHAT: the variable must be set and non-empty.
hbl_require() {
    [[ -n ${!1:-} ]] || hbl_die "$1 is not set: $2 (see --help)"
}

# hbl_posint NAME: the variable, when set, must be an integer >= 1.
hbl_posint() {
    local v=${!1:-}
    [[ -z $v || $v =~ ^[1-9][0-9]*$ ]] || hbl_die "$1='$v': expected a whole number >= 1"
}

# hbl_nonnegint NAME: the variable, when set, must be an integer >= 0.
hbl_nonnegint() {
    local v=${!1:-}
    [[ -z $v || $v =~ ^(0|[1-9][0-9]*)$ ]] || hbl_die "$1='$v': expected a whole number >= 0"
}

# hbl_token NAME: the variable, when set, must be one word (it goes into a directive line).
hbl_token() {
    local v=${!1:-}
    [[ -z $v || $v =~ ^[A-Za-z0-9_.:@+-]+$ ]] || hbl_die "$1='$v': expected one word (letters, digits, _ . : @ + -)"
}

# hbl_walltime: WALLTIME as minutes (M), H:MM or H:MM:SS -> HBL_WALL_MIN (seconds round up).
# One accepted syntax for every scheduler: "30" is 30 minutes everywhere, where Slurm
# alone would read "1:30" as 1 min 30 s; the scripts convert to each scheduler's own form.
hbl_walltime() {
    local v=$WALLTIME
    if [[ $v =~ ^([0-9]+)$ ]]; then
        HBL_WALL_MIN=$((10#${BASH_REMATCH[1]}))
    elif [[ $v =~ ^([0-9]+):([0-5][0-9])$ ]]; then
        HBL_WALL_MIN=$((10#${BASH_REMATCH[1]} * 60 + 10#${BASH_REMATCH[2]}))
    elif [[ $v =~ ^([0-9]+):([0-5][0-9]):([0-5][0-9])$ ]]; then
        HBL_WALL_MIN=$((10#${BASH_REMATCH[1]} * 60 + 10#${BASH_REMATCH[2]} + (10#${BASH_REMATCH[3]} > 0)))
    else
        hbl_die "WALLTIME='$v': expected minutes (90), H:MM (1:30) or H:MM:SS (1:30:00)"
    fi
    ((HBL_WALL_MIN > 0)) || hbl_die "WALLTIME='$v' must be longer than zero"
}

# hbl_abspath NAME: make the path in variable NAME absolute (relative to $PWD), no resolving.
# NODES x RANKS_PER_NODE (one rank per GPU by default) = TOTAL ranks, checked: the shape of
# a job on a cluster whose launcher places ranks per node (PBS, Slurm).
hbl_node_ranks() {
    hbl_require NODES "the number of nodes, e.g. NODES=2"
    hbl_posint NODES
    hbl_nonnegint GPUS_PER_NODE
    [[ ${GPUS_PER_NODE:-0} != 0 ]] && RANKS_PER_NODE=${RANKS_PER_NODE:-$GPUS_PER_NODE}
    hbl_require RANKS_PER_NODE "MPI ranks per node (one per GPU: the GPU count), e.g. RANKS_PER_NODE=4"
    hbl_posint RANKS_PER_NODE
    hbl_posint CPUS_PER_RANK
    TOTAL=$((NODES * RANKS_PER_NODE))
    ((TOTAL >= 2)) || hbl_die "NODES*RANKS_PER_NODE = $TOTAL: hbl_mpi needs at least 2 ranks (rank 0 schedules)"
    hbl_check_groups "$TOTAL" "$RANKS_PER_NODE"
}

# The batch job's settings every scheduler script needs: the time limit (HBL_WALL_MIN),
# the job's name, the account to charge (ACCOUNT, or PROJECT) and the queue, each checked.
hbl_batch_settings() {
    hbl_require WALLTIME "the job's time limit, e.g. WALLTIME=2:00"
    hbl_walltime
    JOB_NAME=${JOB_NAME:-hbl_mpi}
    ACCOUNT=${ACCOUNT:-${PROJECT:-}}
    hbl_token JOB_NAME
    hbl_token ACCOUNT
    hbl_token QUEUE
}

hbl_abspath() {
    local p=${!1}
    [[ $p == /* ]] || p="$PWD/${p#./}"
    printf -v "$1" '%s' "$p"
}

# hbl_check_groups TOTAL RANKS_PER_NODE: can `group_size` (GROUP_SIZE) be laid out?
# hbl_mpi's rule (hbl_mpi/topology.py): the workers of each host split into groups of
# group_size; rank 0 (the scheduler) sits on the first host and belongs to no group.
# With the same rank count on every node the first host has one worker fewer than the
# others, so group_size > 1 can only work on one node. Failing here costs nothing; failing
# after hours in a queue costs the wait.
hbl_check_groups() {
    local total=$1 per_node=$2 g=${GROUP_SIZE:-1} first
    ((g > 1)) || return 0
    first=$((total < per_node ? total - 1 : per_node - 1))
    ((first % g == 0)) || hbl_die "GROUP_SIZE=$g does not divide the $first worker ranks on the first node" \
        "(rank 0 is the scheduler and joins no group); choose ranks so that the workers per node are a multiple of $g"
    if ((total > per_node)); then
        hbl_die "GROUP_SIZE=$g needs every node to hold a multiple of $g workers, but with $per_node ranks on" \
            "every node the first holds $first and the others $per_node; use GROUP_SIZE=1 on several nodes" \
            "(docs/launching.md: group_size > 1 on several nodes)"
    fi
}

# hbl_build_run: HBL_RUN = the per-rank command, from the common variables.
# HBL_RANK_ENV (VAR=value words) are set per rank through `env`, which works the same
# under jsrun, srun, MPICH's and Open MPI's mpiexec (Open MPI would need -x otherwise).
hbl_build_run() {
    hbl_require CONFIG "the run's TOML file, e.g. CONFIG=jobs/demo.toml"
    [[ -f $CONFIG ]] || hbl_die "CONFIG='$CONFIG': no such file"
    hbl_abspath CONFIG
    local restart overwrite extra=()
    hbl_bool RESTART; restart=$REPLY
    hbl_bool OVERWRITE; overwrite=$REPLY
    ((restart && overwrite)) && hbl_die "RESTART=1 and OVERWRITE=1 contradict each other: pick one"
    hbl_posint GROUP_SIZE
    hbl_nonnegint THREADS
    case ${CUDA_AWARE:-auto} in
        auto | '') ;;
        0 | 1) HBL_RANK_ENV+=("HBL_CUDA_AWARE=$CUDA_AWARE") ;;
        *) hbl_die "CUDA_AWARE='$CUDA_AWARE': expected 1, 0 or auto" ;;
    esac
    PYTHON=${PYTHON:-$(command -v python3 || echo python3)}
    if ((!HBL_DRY_RUN)) && ! command -v "$PYTHON" >/dev/null; then
        hbl_die "PYTHON='$PYTHON' is not an executable (set PYTHON to the venv's python)"
    fi
    HBL_RUN=()
    ((${#HBL_RANK_ENV[@]})) && HBL_RUN=(env "${HBL_RANK_ENV[@]}")
    HBL_RUN+=("$PYTHON" -m hbl_mpi run "$CONFIG")
    if [[ -n ${OUT:-} ]]; then
        hbl_abspath OUT
        HBL_RUN+=(--out "$OUT")
    fi
    ((restart)) && HBL_RUN+=(--restart)
    ((overwrite)) && HBL_RUN+=(--overwrite)
    [[ -n ${GROUP_SIZE:-} ]] && HBL_RUN+=(--set "group_size=$GROUP_SIZE")
    [[ -n ${DEVICE:-} ]] && HBL_RUN+=(--set "device=$DEVICE")
    [[ -n ${THREADS:-} ]] && HBL_RUN+=(--set "threads=$THREADS")
    if [[ -n ${EXTRA_ARGS:-} ]]; then
        read -r -a extra <<<"$EXTRA_ARGS"
        HBL_RUN+=(${extra[@]+"${extra[@]}"})
    fi
    HBL_RUN+=(${HBL_PASS[@]+"${HBL_PASS[@]}"})
    return 0
}

# hbl_quote WORDS...: HBL_QUOTED = the words as one shell-quoted line.
hbl_quote() {
    local w out=""
    for w in "$@"; do
        printf -v w '%q' "$w"
        out+="${out:+ }$w"
    done
    HBL_QUOTED=$out
}

# hbl_words NAME: HBL_WORDS = the variable NAME split on whitespace (no quote handling).
hbl_words() {
    HBL_WORDS=()
    [[ -n ${!1:-} ]] && read -r -a HBL_WORDS <<<"${!1}"
    return 0
}

# hbl_launch WORDS...: print (dry run) or exec the launch command.
hbl_launch() {
    hbl_quote "$@"
    if ((HBL_DRY_RUN)); then
        printf '%s\n' "$HBL_QUOTED"
        exit 0
    fi
    command -v "$1" >/dev/null || hbl_die "'$1' not found on PATH (load the site's MPI/launcher module)"
    hbl_note "running: $HBL_QUOTED"
    exec "$@"
}

# hbl_job_script DIRECTIVE_PREFIX LAUNCH_WORDS... : HBL_JOB = the batch script.
# HBL_DIRECTIVES holds the directive arguments (one per line, without the prefix);
# EXTRA_DIRECTIVES adds more, one per line. JOB_SETUP (shell code: module load, venv
# activation) runs in the job before the launch. The launch is exec'd so the job's exit
# status is hbl_mpi's (0, 2 bad input, 3 some nodes failed, 4 aborted).
hbl_job_script() {
    local prefix=$1 line workdir
    shift
    HBL_JOB="#!/bin/bash"$'\n'
    while IFS= read -r line; do
        [[ -n $line ]] && HBL_JOB+="$prefix $line"$'\n'
    done <<<"${HBL_DIRECTIVES}"$'\n'"${EXTRA_DIRECTIVES:-}"
    printf -v workdir '%q' "$PWD"
    HBL_JOB+="# hbl_mpi tree training, generated by $HBL_SCRIPT (docs/launching.md)"$'\n'
    HBL_JOB+="cd $workdir || exit 1"$'\n'
    [[ -n ${JOB_SETUP:-} ]] && HBL_JOB+="${JOB_SETUP}"$'\n'
    hbl_quote "$@"
    HBL_JOB+="exec $HBL_QUOTED"$'\n'
}

# hbl_submit SUBMIT_CMD: pipe HBL_JOB into the submitter, or print the equivalent
# here-document (dry run): the printed text is itself a runnable submission.
hbl_submit() {
    local cmd=$1 args
    hbl_words SUBMIT_ARGS
    hbl_quote "$cmd" ${HBL_WORDS[@]+"${HBL_WORDS[@]}"}
    args=$HBL_QUOTED
    if ((HBL_DRY_RUN)); then
        printf "%s <<'HBL_MPI_JOB'\n%sHBL_MPI_JOB\n" "$args" "$HBL_JOB"
        exit 0
    fi
    command -v "$cmd" >/dev/null || hbl_die "'$cmd' not found: submit from the cluster's login node (DRY_RUN=1 shows the job script)"
    printf '%s' "$HBL_JOB" | "$cmd" ${HBL_WORDS[@]+"${HBL_WORDS[@]}"}
}
