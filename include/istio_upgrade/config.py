"""The DAG's deployment settings, read from the environment when the DAG file is parsed.

- `ISTIO_UPGRADE_WINDOWS`: maintenance windows for the schedule, in the grammar of
  `istio_upgrade.windows` ("Tue,Thu 02:00-04:00 Asia/Tokyo"; several split by ";"). Unset or
  empty: no schedule, runs are triggered by hand.
- `ISTIO_UPGRADE_TARGET_REVISION`: the target revision a run uses when neither its own param
  nor the Airflow Variable `istio_upgrade_target_revision` names one.

Environment only: parsing the DAG file touches no Variable, network or cluster.
"""

from __future__ import annotations

from collections.abc import Mapping

from istio_upgrade.errors import ParamError
from istio_upgrade.params import check_revision
from istio_upgrade.windows import MaintenanceWindow, parse_windows

WINDOWS_ENV = "ISTIO_UPGRADE_WINDOWS"
TARGET_ENV = "ISTIO_UPGRADE_TARGET_REVISION"


def windows(environ: Mapping[str, str]) -> tuple[MaintenanceWindow, ...]:
    """The configured maintenance windows; () when none is set (manual runs only)."""
    spec = environ.get(WINDOWS_ENV, "").strip()
    if not spec:
        return ()
    try:
        return parse_windows(spec)
    except ParamError as error:  # name the variable the operator has to fix
        raise ParamError(WINDOWS_ENV, spec, error.problem, error.fix) from None


def default_target(environ: Mapping[str, str]) -> str:
    """The configured default target revision ('' when unset); checked like the param."""
    value = environ.get(TARGET_ENV, "").strip()
    if value:
        try:
            check_revision("target_revision", value)
        except ParamError as error:
            raise ParamError(TARGET_ENV, value, error.problem, error.fix) from None
    return value
