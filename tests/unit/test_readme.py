"""README stays true to the code: every parameter is documented with its real default."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from istio_upgrade import config, upgrade_lock
from istio_upgrade.params import PARAM_SPECS

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


@pytest.mark.parametrize("name", list(PARAM_SPECS))
def test_param_documented_with_its_default(name: str) -> None:
    default = json.dumps(PARAM_SPECS[name].default)
    row = f"| `{name}` | `{default}` |"
    assert row in README, f"README's parameter table lacks the row starting {row!r}"


def test_readme_names_the_two_commands() -> None:
    assert "`make demo`" in README and "`make test`" in README


def test_readme_names_the_settings_and_the_lock_the_code_uses() -> None:
    for name in (config.PROMETHEUS_URLS_ENV, config.CONN_IDS_ENV, config.OVERLAY_DIR_ENV):
        assert f"| `{name}` |" in README, f"README's allow-list table lacks {name}"
    assert f"`istio-system/{upgrade_lock.LEASE_NAME}`" in README
    for name in (config.WINDOWS_ENV, config.TARGET_ENV, config.PARAM_DEFAULTS_ENV):
        assert f"`{name}`" in README, f"README does not say how to set {name}"
    assert f"expires by itself {upgrade_lock.LEASE_SECONDS // 60} min" in README
