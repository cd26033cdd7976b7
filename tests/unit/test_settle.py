"""steps.settle: how a step reads an action's result back."""

from __future__ import annotations

import time

from istio_upgrade.steps import settle


def test_settle_asks_until_the_answer_is_yes() -> None:
    answers = iter([False, False, True])
    assert settle(lambda: next(answers), seconds=5, every=0.01)


def test_settle_gives_up_after_its_time_with_the_last_answer() -> None:
    asked = []
    started = time.monotonic()
    assert not settle(lambda: asked.append(1) is not None, seconds=0.1, every=0.02)
    assert time.monotonic() - started < 2
    assert len(asked) >= 2, "it gave up without asking again"
