"""README stays true to the code: every parameter is documented with its real default."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from istio_upgrade.params import PARAM_SPECS

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


@pytest.mark.parametrize("name", list(PARAM_SPECS))
def test_param_documented_with_its_default(name: str) -> None:
    default = json.dumps(PARAM_SPECS[name].default)
    row = f"| `{name}` | `{default}` |"
    assert row in README, f"README's parameter table lacks the row starting {row!r}"


def test_readme_names_the_two_commands() -> None:
    assert "`make demo`" in README and "`make test`" in README
