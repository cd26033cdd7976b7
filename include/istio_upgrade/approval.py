"""Human approval of the canary: the question a person sees, and how the answer counts.

After the metric gate passed, a person may have to approve before the remaining namespaces
move (param `require_approval`). The question shows the canary's own figures; *Approve*
continues, *Reject* rolls back, and without an answer within `approval_timeout_seconds`
the scheduler records `approval_default` (reject unless configured otherwise: fail closed).
`verdict` is what the branch after the gate decides from both the gate and the answer.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from istio_upgrade.contracts import Contract, allow
from istio_upgrade.health import GateResult, figure
from istio_upgrade.params import ResolvedParams

APPROVE = "Approve"
REJECT = "Reject"
OPTIONS = (APPROVE, REJECT)


def default_option(approval_default: str) -> str:
    """The option the scheduler records when nobody answers in time."""
    return APPROVE if approval_default == "approve" else REJECT


def skip_reason(require_approval: bool, gate: GateResult | None) -> str | None:
    """Why no one needs to be asked (the task is skipped), or None when someone must be."""
    if not require_approval:
        return "require_approval is off: the metric gate alone decides"
    if gate is None or not gate.passed:
        return "the metric gate did not pass: the canary rolls back without asking"
    return None


@dataclass(frozen=True)
class Question:
    """What a person is asked after the gate passed, and what counts without an answer."""

    subject: str
    body: str  # Markdown
    default: str  # the option taken when nobody answers in time
    timeout_seconds: int


def subject(rp: ResolvedParams) -> str:
    return (
        f"Istio canary on {rp.target_revision} passed its metric gate: "
        f"continue the upgrade from {rp.current_revision}?"
    )


def body(
    rp: ResolvedParams,
    gate: GateResult,
    timeout_text: str,
    waves: Sequence[Sequence[str]],
) -> str:
    """The question in Markdown: the canary's figures, what each answer does, the default.

    `waves` are the plan's namespaces still to move, wave by wave (gateways moved already).
    """
    canary = ", ".join(f"**{n}**" for n in rp.canary)
    rest = "; ".join(", ".join(wave) for wave in waves if wave)
    lines = [
        f"### Canary on `{rp.target_revision}`: metric gate {gate.verdict}",
        "",
        f"The canary namespaces {canary} run revision `{rp.target_revision}` "
        f"(moving from `{rp.current_revision}`). Latest check:",
        "",
        "| Namespace | Metric | Value | Limit | Outcome |",
        "|---|---|---|---|---|",
        *(
            f"| {c.namespace} | {c.metric} | {figure(c.metric, c.value)} "
            f"| {figure(c.metric, c.limit)} | {c.outcome} |"
            for c in gate.checks
        ),
        "",
        gate.message,
        "",
        f"- **{APPROVE}**: restart the remaining namespaces onto `{rp.target_revision}` in "
        f"waves of {rp.params.wave_concurrency} ({rest or 'none left'}), then "
        f"remove `{rp.current_revision}` once nothing uses it.",
        f"- **{REJECT}**: move tag `{rp.tag}` back to `{rp.current_revision}` and restart "
        "what already moved (gateways and canary).",
        f"- No answer within {timeout_text}: "
        f"**{default_option(rp.params.approval_default)}** (approval_default).",
    ]
    if rp.window_end:
        lines.append(
            f"- The window ends at {rp.window_end}: waves that would not fit by then are "
            "left for the next run."
        )
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class Answer(Contract):
    """What came back: the option, who chose it (None: nobody, the timeout default)."""

    option: str
    by: str | None
    timed_out: bool

    @property
    def approved(self) -> bool:
        return self.option == APPROVE

    @property
    def message(self) -> str:
        if self.timed_out or self.by is None:
            return f"no answer in time: approval_default {self.option!r} was taken"
        done = {APPROVE: "approved", REJECT: "rejected"}.get(self.option, repr(self.option))
        return f"{done} by {self.by}"


def answer_from(
    chosen: Sequence[str], responded_by: Mapping[str, Any] | None, timed_out: bool
) -> Answer:
    """The answer from a Human-in-the-loop response (one option; no user on a timeout)."""
    option = chosen[0] if len(chosen) == 1 else ""
    by = None if responded_by is None else str(responded_by.get("name") or responded_by.get("id"))
    return Answer(option, by, timed_out or by is None)


@dataclass(frozen=True)
class Verdict:
    """Continue with the waves, or roll back; and why, for the log and the report."""

    proceed: bool
    reason: str


def verdict(require_approval: bool, gate: GateResult | None, answer: Answer | None) -> Verdict:
    """The gate must pass; with require_approval a person (or the default) must approve too."""
    if gate is None:
        return Verdict(False, "the metric gate gave no verdict")
    if not gate.passed:
        return Verdict(False, gate.message)
    gate_message = gate.message
    if not require_approval:
        return Verdict(True, gate_message)
    if answer is None:
        # fail closed: approval was required, and no answer is on record
        return Verdict(False, "approval required, but no answer was recorded")
    if answer.approved:
        return Verdict(True, f"{gate_message}; {answer.message}")
    return Verdict(False, f"the canary passed its gate but was not approved: {answer.message}")


allow(Answer)
