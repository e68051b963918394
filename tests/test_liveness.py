"""liveness.py: what counts as a dead rank, and how often a rank looks (no MPI needed).

The pid watch is what ends a job whose launcher keeps it running after a rank died
(srun without --kill-on-bad-exit); a false "dead" kills a healthy run, a false "alive"
hangs it, so each verdict is checked on real processes: running, exited and reaped,
a zombie (exited, not reaped), and a pid whose start time says it is another process.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from hbl_mpi.runtime.liveness import PeerWatch, ProcessIdentity, describe_death, identity, is_alive

pytestmark = pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs procfs (Linux)")


def sleeper() -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])


def wait_state(pid: int, states: str, timeout: float = 10.0) -> None:
    """Until /proc/PID/stat shows one of ``states`` (the kernel takes a moment after a kill)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with open(f"/proc/{pid}/stat") as f:
            if f.read().rsplit(")", 1)[1].split()[0] in states:
                return
        time.sleep(0.01)
    raise AssertionError(f"pid {pid} never reached state {states}")


@pytest.mark.timeout(30)
def test_running_child_is_alive_and_dead_once_exited():
    p = sleeper()
    try:
        who = identity(p.pid)
        assert who.pid == p.pid and who.start  # the start time is known on Linux
        assert is_alive(who)
    finally:
        p.kill()
        p.wait()
    assert not is_alive(who)


@pytest.mark.timeout(30)
def test_zombie_is_dead():
    """A rank killed but not yet reaped by its launcher still has a pid: it is dead."""
    p = sleeper()
    who = identity(p.pid)
    try:
        p.kill()
        wait_state(p.pid, "ZX")
        assert os.path.exists(f"/proc/{p.pid}")  # the pid still exists ...
        assert not is_alive(who)  # ... but names a dead process
    finally:
        p.wait()


def test_reused_pid_with_another_start_time_is_dead():
    me = identity()
    assert is_alive(me)
    assert not is_alive(ProcessIdentity(me.pid, str(int(me.start) + 1)))  # same pid, another process
    assert is_alive(ProcessIdentity(me.pid, ""))  # start unknown: the pid alone decides


def test_nonexistent_pid_is_dead():
    with open("/proc/sys/kernel/pid_max") as f:
        pid_max = int(f.read())
    assert not is_alive(ProcessIdentity(pid_max + 1, "1"))


def test_peer_watch_checks_at_most_every_interval_and_reports_once():
    now = [100.0]
    alive, dead = identity(), ProcessIdentity(os.getpid(), "0")  # "0": this pid, another start time
    watch = PeerWatch({1: alive, 2: dead}, interval=1.0, clock=lambda: now[0])
    assert watch.dead() == {2: dead}  # the first call looks
    assert list(watch.peers) == [1]
    watch.peers[3] = dead  # a new death between checks ...
    now[0] += 0.5
    assert watch.dead() == {}  # ... is not looked for before the interval is up
    now[0] += 0.5
    assert watch.dead() == {3: dead}
    now[0] += 5
    assert watch.dead() == {}  # each death reported once; the living stay watched
    assert list(watch.peers) == [1]


def test_peer_watch_empty_never_looks():
    calls = []
    watch = PeerWatch({}, clock=lambda: calls.append(1) or 0.0)
    assert watch.dead() == {} and calls == []


def test_on_my_host_watches_only_visible_ranks_of_this_host():
    me = identity()
    gone = ProcessIdentity(me.pid, "0")  # not alive at start-up: another PID namespace, never watched
    procs = [me, me, gone, me]
    hosts = [0, 0, 0, 1]
    watch = PeerWatch.on_my_host([1, 2, 3], procs, hosts, me=0)
    assert set(watch.peers) == {1}  # 2 invisible, 3 on another host, 0 is me
    assert PeerWatch.on_my_host([1], [], hosts, me=0).peers == {}  # no pids published


def test_describe_death_names_rank_and_pid():
    text = describe_death(3, ProcessIdentity(4242, "9"))
    assert "rank 3" in text and "pid 4242" in text and "killed" in text


def test_a_peer_dead_before_the_watch_is_built_is_still_reported():
    """Visibility judged at start-up (Topology.visible): a peer that was seen then and has
    died since is watched, and found dead at the first check (not taken for a pid of
    another namespace, which would leave the watcher waiting for it forever)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    who = identity(proc.pid)
    proc.wait()
    me = identity()
    watch = PeerWatch.on_my_host([1], [me, who], [0, 0], me=0, visible=[True, True])
    assert set(watch.peers) == {1}
    assert set(watch.dead()) == {1}
    unseen = PeerWatch.on_my_host([1], [me, who], [0, 0], me=0, visible=[True, False])
    assert unseen.peers == {}  # not seen at start-up: another PID namespace, never watched


# ----------------------------------------------------------------------------- stalls (issue 19 item 7)

def test_stall_rule_fixed_limit():
    from hbl_mpi.runtime.liveness import StallRule

    rule = StallRule(seconds=30.0)
    assert rule.limit(work=1e9, rates=[]) == 30.0 and rule.limit(work=1.0, rates=[5.0]) == 30.0


def test_stall_rule_automatic_scales_with_the_node_and_has_a_floor():
    from hbl_mpi.runtime.liveness import STALL_FACTOR, STALL_FLOOR_S, StallRule

    rule = StallRule()
    assert rule.limit(work=100.0, rates=[]) is None  # nothing finished yet: no verdict
    # median rate 0.01 s/unit: a node of 1e5 units is expected to take 1000 s
    assert rule.limit(work=1e5, rates=[0.005, 0.01, 0.5]) == pytest.approx(STALL_FACTOR * 1000.0)
    # twice the work, twice the limit: a big node is not judged by the small ones
    assert rule.limit(work=2e5, rates=[0.01]) == pytest.approx(2 * rule.limit(work=1e5, rates=[0.01]))
    assert rule.limit(work=1.0, rates=[0.001]) == STALL_FLOOR_S


def test_stalled_names_only_the_silent_groups():
    from hbl_mpi.runtime.liveness import Stall, StallRule, stalled

    running = {0: ("1.1", 0.0, 10.0), 1: ("1.2", 50.0, 10.0), 3: ("1.3", 0.0, 1000.0)}
    rule = StallRule(factor=2.0, floor=0.0)
    # rate 1 s/unit: limits 20 s, 20 s and 2000 s
    assert stalled(60.0, running, rule, [1.0]) == [Stall(0, "1.1", 60.0, 20.0)]
    assert stalled(60.0, running, StallRule(), []) == []
    assert [s.group for s in stalled(100.0, running, StallRule(seconds=45.0), [])] == [0, 1, 3]


def test_process_state_sees_a_stopped_process():
    import signal
    import subprocess
    import sys
    import time

    from hbl_mpi.runtime.liveness import identity, process_state

    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        os.kill(child.pid, signal.SIGSTOP)
        deadline = time.monotonic() + 5
        while process_state(identity(child.pid)) != "T" and time.monotonic() < deadline:
            time.sleep(0.02)
        assert process_state(identity(child.pid)) == "T"
    finally:
        child.kill()
        child.wait()
