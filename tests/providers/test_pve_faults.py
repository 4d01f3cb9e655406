"""A fault at every step of a start, through the service layer, against the simulator.

For each call a start makes (create: find/place, clone, wait, read config, configure,
grow the disk, wait; start: read status, start, wait; read the result back), and for each
fault that call can meet (HTTP 500, a timeout, a dropped connection, a lost response,
"CT is locked", "can't lock file", "already exists", a failed task), the fault is made
*sticky*: once it hits a call, every identical call fails too (the step's retries and the
service layer's retries of the whole start), and nothing else does.

The sandbox must end ``failed`` with a readable ``last_error``, the simulator must hold no
guest of ours and our database no VMID reservation. Three faults are ones a correct
control plane recovers from, and there the sandbox must end ``running`` (and work):
"already exists" on the clone (another VMID is taken), a lost answer to the start (the
guest did start), and losing track of the start task (the guest is seen running).
"""

from __future__ import annotations

import pytest

from sandboxes.models import Reservation, Sandbox
from sandboxes.services.actors import Actor
from sandboxes.services.interactive import exec_command
from sandboxes.services.lifecycle import delete_sandbox, perform_operation
from sandboxes.states import Status
from tests.providers.pve_service import service_rig
from tests.pve_sim.harness import require_for
from tests.pve_sim.server import (
    DROP,
    DROP_AFTER,
    EXISTS,
    HTTP_500,
    LOCK_FILE,
    LOCKED,
    TASK_FAIL,
    TIMEOUT,
    PveSimulator,
)

pytestmark = [pytest.mark.django_db, pytest.mark.slow]

GUEST = {"pve-lxc": "lxc", "pve-vm": "qemu"}
TASKS = {
    "pve-lxc": {"clone": "vzclone", "start": "vzstart"},
    "pve-vm": {"clone": "qmclone", "start": "qmstart"},
}
READ_FAULTS = (HTTP_500, TIMEOUT, DROP)
WRITE_FAULTS = (HTTP_500, TIMEOUT, DROP, DROP_AFTER, LOCKED, LOCK_FILE)
TASKS_STATUS = "/nodes/{node}/tasks/{upid}/status"


def steps(kind: str) -> list[tuple[str, str, int, str]]:
    """(method, path template, occurrence, task type) of every call one start makes."""
    g = f"/nodes/{{node}}/{GUEST[kind]}/{{vmid}}"
    t = TASKS[kind]
    listed = [
        ("GET", "/cluster/resources", 1, ""),
        ("POST", f"{g}/clone", 1, ""),
        ("GET", TASKS_STATUS, 1, t["clone"]),
        ("GET", f"{g}/config", 1, ""),
        ("PUT", f"{g}/config", 1, ""),
        ("PUT", f"{g}/resize", 1, ""),
        ("GET", TASKS_STATUS, 1, "resize"),
        ("GET", f"{g}/status/current", 1, ""),
        ("POST", f"{g}/status/start", 1, ""),
        ("GET", TASKS_STATUS, 1, t["start"]),
        ("GET", "/cluster/resources", 2, ""),
        ("GET", f"{g}/config", 2, ""),
    ]
    if kind == "pve-vm":  # reading a running VM back asks whether it is paused
        listed.append(("GET", f"{g}/status/current", 2, ""))
    return listed


def scenarios(kind: str) -> list[tuple[str, str, int, str, str]]:
    found = []
    for method, path, occurrence, task in steps(kind):
        kinds = list(READ_FAULTS if method == "GET" else WRITE_FAULTS)
        if path.endswith(("/clone", "/resize", "/status/start")):
            kinds.append(TASK_FAIL)
        if path.endswith("/clone"):
            kinds.append(EXISTS)
        found += [(method, path, occurrence, task, fault) for fault in kinds]
    return found


def recovers(kind: str, method: str, path: str, task: str, fault: str) -> bool:
    """The faults a correct control plane gets past (see the module docstring)."""
    if fault == EXISTS:
        return True
    if path.endswith("/status/start") and fault == DROP_AFTER:
        return True
    return path == TASKS_STATUS and task == TASKS[kind]["start"]


KINDS = ("pve-lxc", "pve-vm")
FAST = {"PVE_HTTP_TIMEOUT": "0.3", "PVE_LOCK_WAIT": "0.4"}


@pytest.fixture(scope="module")
def sims(tmp_path_factory):
    """One simulator per provider kind, shared by this module's tests."""
    made: dict[str, PveSimulator] = {}

    def get(kind: str) -> PveSimulator:
        require_for(kind)
        if kind not in made:
            sim = PveSimulator(tmp_path_factory.mktemp(kind), task_delay=0.01, hang_seconds=0.6)
            sim.default_cluster()
            made[kind] = sim.start()
        return made[kind]

    yield get
    for sim in made.values():
        sim.close()


@pytest.mark.parametrize("kind", KINDS)
def test_the_fault_matrix_covers_every_call_a_start_makes(sims, kind):
    sim = sims(kind)
    with service_rig(sim, kind, "matrix", **FAST) as rig:
        sim.reset_calls()
        sandbox = rig.start_one()
        assert sandbox.status == Status.RUNNING, sandbox.last_error
        made: list[tuple[str, str, str]] = []
        for call in list(sim.calls):
            step = (call.method, call.template, call.task_type)
            if not made or made[-1] != step:  # polls of one task are one step
                made.append(step)
        listed = [(m, p, t) for m, p, _, t in steps(kind)]
        assert made == listed
        delete_sandbox(sandbox=sandbox, actor=Actor.system())
        perform_operation(sandbox_id=sandbox.pk)
        assert rig.ours() == []


CASES = [
    pytest.param(kind, *case, id=f"{kind}-{case[4]}-{case[0]}-{case[1]}#{case[2]}{case[3]}")
    for kind in KINDS
    for case in scenarios(kind)
]


@pytest.mark.parametrize(("kind", "method", "path", "occurrence", "task", "fault"), CASES)
def test_a_fault_at_each_step_of_a_start(sims, kind, method, path, occurrence, task, fault):
    sim = sims(kind)
    where = (lambda call: call.task_type == task) if task else None
    with service_rig(sim, kind, "faults", **FAST) as rig:
        sim.clear_faults()
        sim.add_fault(
            method, path, fault, skip=occurrence - 1, times=None, sticky=True, where=where
        )
        sandbox = rig.start_one()
        sim.clear_faults()
        label = f"{fault} at {method} {path} #{occurrence} {task}".strip()
        if recovers(kind, method, path, task, fault):
            _assert_recovered(rig, sandbox, label)
        else:
            _assert_failed_cleanly(rig, sandbox, label)


def _assert_failed_cleanly(rig, sandbox: Sandbox, label: str) -> None:
    assert sandbox.status == Status.FAILED, f"{label}: ended {sandbox.status}"
    error = sandbox.last_error
    assert error.startswith("start failed: "), f"{label}: {error!r}"
    assert 20 < len(error) < 1500, f"{label}: {error!r}"
    assert "Traceback" not in error
    assert rig.sim.token_secret not in error
    assert rig.ours() == [], f"{label}: left {[g.vmid for g in rig.ours()]}; error: {error}"
    assert not Reservation.objects.exists(), f"{label}: a VMID reservation was left"


def _assert_recovered(rig, sandbox: Sandbox, label: str) -> None:
    assert sandbox.status == Status.RUNNING, f"{label}: {sandbox.last_error}"
    left = rig.ours()
    assert [str(g.vmid) for g in left] == [sandbox.provider_ref], label
    result = exec_command(sandbox=sandbox, actor=Actor.system(), command="echo ok")
    assert result.stdout == "ok\n"
    delete_sandbox(sandbox=sandbox, actor=Actor.system())
    perform_operation(sandbox_id=sandbox.pk)
    assert Sandbox.objects.get(pk=sandbox.pk).status == Status.DELETED
    assert rig.ours() == []
    assert not Reservation.objects.exists()
