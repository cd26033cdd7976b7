"""What a task must keep across its own retries, kept as notes on the run's lock (a Lease).

Neither place Airflow offers survives what these must survive: a trigger's arguments are
fixed when the task defers (a restarted triggerer starts again from them), a task's XComs
are cleared when Airflow retries it (also when Airflow failed the try by itself, see
retry_policies), and its task state store may be cleared on success by configuration. The
run's Lease lives as long as the run holds the cluster, is readable from the worker and the
triggerer alike, and goes with the run's end.
"""

from __future__ import annotations

import json

from istio_upgrade import upgrade_lock
from istio_upgrade.cluster import Kube
from istio_upgrade.health import GateState

GATE = "gate"
APPROVAL = "approval"


def save_gate(kube: Kube, holder: str, state: GateState) -> None:
    upgrade_lock.write_note(kube, holder, GATE, json.dumps(state.to_json()))


def saved_gate(kube: Kube, holder: str) -> GateState | None:
    """The counters of a bake of this run that has not handed its verdict over yet."""
    text = upgrade_lock.note(kube, holder, GATE)
    return None if text is None else GateState.from_json(json.loads(text))


def forget_gate(kube: Kube, holder: str) -> None:
    """The verdict is the task's result now: a later clear of the task judges afresh."""
    upgrade_lock.write_note(kube, holder, GATE, None)


def save_asked(kube: Kube, holder: str, deadline: float) -> None:
    """A person is being asked, until `deadline` (epoch seconds): a retry of the task must
    look for an answer given meanwhile before it asks again, and keep the deadline."""
    upgrade_lock.write_note(kube, holder, APPROVAL, json.dumps({"deadline": deadline}))


def asked_until(kube: Kube, holder: str) -> float | None:
    """The deadline of a question an earlier try asked and never handed an answer of."""
    text = upgrade_lock.note(kube, holder, APPROVAL)
    return None if text is None else float(json.loads(text)["deadline"])


def forget_asked(kube: Kube, holder: str) -> None:
    """The answer is the task's result now: a later clear of the task asks afresh."""
    upgrade_lock.write_note(kube, holder, APPROVAL, None)
