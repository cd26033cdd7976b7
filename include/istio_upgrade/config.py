"""The DAG's deployment settings, read from the environment.

Read when the DAG file is parsed:

- `ISTIO_UPGRADE_WINDOWS`: maintenance windows for the schedule, in the grammar of
  `istio_upgrade.windows` ("Tue,Thu 02:00-04:00 Asia/Tokyo"; several split by ";"). Unset or
  empty: no schedule, runs are triggered by hand.
- `ISTIO_UPGRADE_TARGET_REVISION`: the target revision a run uses when neither its own param
  nor the Airflow Variable `istio_upgrade_target_revision` names one.
- `ISTIO_UPGRADE_PARAM_DEFAULTS`: the deployment's own defaults for the DAG's params, a JSON
  object such as `{"bake_seconds": 600, "prometheus_url": "http://prometheus:9090"}`. A
  scheduled run has no one to fill in the form: it runs with these. The trigger form starts
  from them too. A default of `prometheus_url` or `kubernetes_conn_id` is allowed for runs
  like the DAG's own (below).

Read by `validate` on the worker, before anything runs: what a run's params may point the
worker at. Whoever may trigger the DAG chooses its params, a weaker right than deploying it,
so the servers and files are the operator's choice (unset: the DAG's own defaults only):
- `ISTIO_UPGRADE_PROMETHEUS_URLS`: the Prometheus base URLs `prometheus_url` may name
  (split by commas or spaces).
- `ISTIO_UPGRADE_KUBERNETES_CONN_IDS`: the Airflow connections `kubernetes_conn_id` may name.
- `ISTIO_UPGRADE_OVERLAY_DIR`: the folder whose files `install_overlay` may name (unset: no
  overlay).

Environment only: parsing the DAG file touches no Variable, network or cluster.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from istio_upgrade.errors import ParamError
from istio_upgrade.istioctl import inside
from istio_upgrade.params import PARAM_SPECS, UpgradeParams, check_revision
from istio_upgrade.windows import MaintenanceWindow, parse_windows

WINDOWS_ENV = "ISTIO_UPGRADE_WINDOWS"
TARGET_ENV = "ISTIO_UPGRADE_TARGET_REVISION"
PROMETHEUS_URLS_ENV = "ISTIO_UPGRADE_PROMETHEUS_URLS"
CONN_IDS_ENV = "ISTIO_UPGRADE_KUBERNETES_CONN_IDS"
OVERLAY_DIR_ENV = "ISTIO_UPGRADE_OVERLAY_DIR"
PARAM_DEFAULTS_ENV = "ISTIO_UPGRADE_PARAM_DEFAULTS"


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


def param_defaults(environ: Mapping[str, str]) -> dict[str, Any]:
    """The deployment's defaults for the DAG's params ({} when unset).

    Each value is checked against its param's schema, as the trigger form checks it: a bad
    one is an import error of the DAG naming it (Airflow itself checks defaults only for a
    scheduled DAG). What depends on other params or on the cluster, validate checks.
    """
    text = environ.get(PARAM_DEFAULTS_ENV, "").strip()
    if not text:
        return {}
    example = 'a JSON object, e.g. {"bake_seconds": 600}'
    try:
        values = json.loads(text)
    except ValueError as err:
        problem = f"is not JSON ({err})"
        raise ParamError(PARAM_DEFAULTS_ENV, text, problem, f"give {example}") from None
    if not isinstance(values, dict):
        raise ParamError(PARAM_DEFAULTS_ENV, text, "is not a JSON object", f"give {example}")
    unknown = sorted(set(values) - set(PARAM_SPECS))
    if unknown:
        raise ParamError(
            PARAM_DEFAULTS_ENV,
            text,
            f"names {', '.join(unknown)}, not params of the DAG",
            "use the names the trigger form shows under each field (README lists them)",
        )
    import jsonschema  # Airflow's own dependency, which validates Params

    for name, value in values.items():
        try:
            jsonschema.validate(value, PARAM_SPECS[name].json_schema())
        except jsonschema.ValidationError as err:
            raise ParamError(
                PARAM_DEFAULTS_ENV,
                text,
                f"sets {name} to {value!r}, which that param refuses ({err.message})",
                f"give {name} a value its field in the trigger form accepts",
            ) from None
    return values


@dataclass(frozen=True)
class AllowedTargets:
    """What a run's params may point the worker at (see the module's docstring)."""

    prometheus_urls: frozenset[str]
    conn_ids: frozenset[str]
    overlay_dir: str  # "": no overlay allowed


def allowed_targets(environ: Mapping[str, str]) -> AllowedTargets:
    defaults = {name: spec.default for name, spec in PARAM_SPECS.items()}
    defaults.update(param_defaults(environ))

    def listed(name: str, default: str) -> frozenset[str]:
        items = re.split(r"[\s,]+", environ.get(name, "").strip())
        return frozenset(i.rstrip("/") for i in items if i) or frozenset({default})

    return AllowedTargets(
        prometheus_urls=listed(PROMETHEUS_URLS_ENV, defaults["prometheus_url"]),
        conn_ids=listed(CONN_IDS_ENV, defaults["kubernetes_conn_id"]),
        overlay_dir=environ.get(OVERLAY_DIR_ENV, "").strip(),
    )


def check_allowed(params: UpgradeParams, allowed: AllowedTargets) -> None:
    """Refuse a server or file the operator did not allow, naming the setting to change."""
    for name, value, listed, env in (
        ("prometheus_url", params.prometheus_url, allowed.prometheus_urls, PROMETHEUS_URLS_ENV),
        ("kubernetes_conn_id", params.kubernetes_conn_id, allowed.conn_ids, CONN_IDS_ENV),
    ):
        if value not in listed:
            raise ParamError(
                name,
                value,
                f"is not one the operator allows ({', '.join(sorted(listed))})",
                f"use one of those, or ask the operator to add it to {env} on the workers",
            )
    overlay = params.install_overlay
    if overlay and not (
        allowed.overlay_dir and os.path.isfile(overlay) and inside(overlay, [allowed.overlay_dir])
    ):
        where = allowed.overlay_dir or f"none: {OVERLAY_DIR_ENV} is unset"
        raise ParamError(
            "install_overlay",
            params.install_overlay,
            f"is not a file in the operator's overlay folder ({where})",
            f"name a file in {OVERLAY_DIR_ENV}, or ask the operator to put the overlay there",
        )
