"""Human approval: who is asked, what they see, and how the answer and the gate combine."""

from __future__ import annotations

import json
from typing import Any

import pytest

from istio_upgrade.approval import (
    APPROVE,
    REJECT,
    Answer,
    answer_from,
    body,
    default_option,
    skip_reason,
    subject,
    verdict,
)
from istio_upgrade.health import GateResult, HealthVerdict
from istio_upgrade.params import ResolvedParams, parse_params

PASSED = GateResult.from_json({
    "verdict": "passed",
    "message": "gate passed: 0 of 4 checks failed (failure_limit 2, bake 6s)",
    "checks": [
        {"namespace": "bar", "metric": "success_rate", "value": 0.99731, "limit": 0.99,
         "outcome": "passed", "message": "..."},
        {"namespace": "bar", "metric": "p99_ms", "value": 23.04, "limit": 500.0,
         "outcome": "passed", "message": "..."},
        {"namespace": "bar", "metric": "p99_ms", "value": None, "limit": 500.0,
         "outcome": "no_data", "message": "..."},
    ],
    "checks_done": 2,
    "checks_failed": 0,
})  # fmt: skip
FAILED = GateResult(HealthVerdict.FAILED, "gate failed: 2 of 2 checks failed", (), 2, 2)
APPROVED = Answer(APPROVE, "admin", False)
REJECTED = Answer(REJECT, "alice", False)
SILENT_REJECT = Answer(REJECT, None, True)
SILENT_APPROVE = Answer(APPROVE, None, True)


def resolved(**overrides: Any) -> ResolvedParams:
    params = parse_params({"target_revision": "1-15-4", **overrides})
    return ResolvedParams(
        params, "1-14-6", ("bar", "baz", "foo", "qux"), ("bar",), (), False,
        window_end="2026-03-03T03:00:00+00:00",
    )  # fmt: skip


@pytest.mark.parametrize(
    ("required", "gate", "skipped"),
    [
        pytest.param(False, PASSED, "require_approval is off", id="not-required"),
        pytest.param(True, FAILED, "did not pass", id="gate-failed-no-question"),
        pytest.param(True, None, "did not pass", id="no-gate-verdict"),
        pytest.param(True, PASSED, None, id="ask"),
    ],
)
def test_skip_reason(required: bool, gate: GateResult | None, skipped: str | None) -> None:
    found = skip_reason(required, gate)
    assert found == skipped if skipped is None else skipped in (found or "")


@pytest.mark.parametrize(
    ("required", "gate", "answer", "proceed", "reason"),
    [
        pytest.param(False, PASSED, None, True, "gate passed", id="gate-alone-passes"),
        pytest.param(False, FAILED, None, False, "gate failed", id="gate-alone-fails"),
        pytest.param(False, None, None, False, "no verdict", id="no-gate-fails-closed"),
        pytest.param(True, PASSED, APPROVED, True, "approved by admin", id="approved"),
        pytest.param(True, PASSED, REJECTED, False, "rejected by alice", id="rejected"),
        pytest.param(True, PASSED, SILENT_REJECT, False, "approval_default 'Reject'",
                     id="timeout-default-reject"),
        pytest.param(True, PASSED, SILENT_APPROVE, True, "approval_default 'Approve'",
                     id="timeout-configured-approve"),
        pytest.param(True, PASSED, None, False, "no answer was recorded",
                     id="required-but-no-answer-fails-closed"),
        pytest.param(True, FAILED, APPROVED, False, "gate failed", id="approval-cannot-override"),
    ],
)  # fmt: skip
def test_verdict(
    required: bool,
    gate: GateResult | None,
    answer: Answer | None,
    proceed: bool,
    reason: str,
) -> None:
    found = verdict(required, gate, answer)
    assert found.proceed is proceed and reason in found.reason, found


@pytest.mark.parametrize(
    ("chosen", "user", "timed_out", "expected"),
    [
        pytest.param([APPROVE], {"id": "1", "name": "alice"}, False, ("Approve", "alice", False),
                     id="person-approves"),
        pytest.param([REJECT], {"id": "bob"}, False, ("Reject", "bob", False), id="id-only"),
        pytest.param([REJECT], None, True, ("Reject", None, True), id="timeout-default"),
        pytest.param([APPROVE], None, False, ("Approve", None, True), id="no-user-is-a-timeout"),
        pytest.param([], {"name": "x"}, False, ("", "x", False), id="nothing-chosen"),
    ],
)  # fmt: skip
def test_answer_from(
    chosen: list[str],
    user: dict[str, str] | None,
    timed_out: bool,
    expected: tuple[str, str | None, bool],
) -> None:
    answer = answer_from(chosen, user, timed_out)
    assert (answer.option, answer.by, answer.timed_out) == expected
    assert Answer.from_json(json.loads(json.dumps(answer.to_json()))) == answer
    assert answer.approved is (answer.option == APPROVE)


def test_default_option() -> None:
    assert (default_option("reject"), default_option("approve")) == (REJECT, APPROVE)


def test_body_shows_the_canary_figures_and_what_each_answer_does() -> None:
    rp = resolved(approval_default="approve", wave_concurrency=3)
    text = body(rp, PASSED, "30m00s", [("baz", "foo", "qux")])
    assert "| bar | success_rate | 0.9973 | 0.9900 | passed |" in text
    assert "| bar | p99_ms | 23.0ms | 500.0ms | passed |" in text
    assert "| bar | p99_ms | no data | 500.0ms | no_data |" in text
    assert "gate passed: 0 of 4 checks failed" in text
    assert "waves of 3 (baz, foo, qux)" in text
    assert "move tag `default` back to `1-14-6`" in text
    assert "No answer within 30m00s: **Approve**" in text
    assert "2026-03-03T03:00:00+00:00" in text
    assert "1-15-4" in subject(rp) and "1-14-6" in subject(rp)
