"""Deployment settings and the params added for windows and approval."""

from __future__ import annotations

from typing import Any

import pytest

from istio_upgrade.config import (
    CONN_IDS_ENV,
    OVERLAY_DIR_ENV,
    PARAM_DEFAULTS_ENV,
    PROMETHEUS_URLS_ENV,
    TARGET_ENV,
    WINDOWS_ENV,
    allowed_targets,
    check_allowed,
    default_target,
    windows,
)
from istio_upgrade.errors import ParamError
from istio_upgrade.params import TARGET_VARIABLE, parse_params, with_target


@pytest.mark.parametrize(
    ("value", "labels"),
    [
        pytest.param(None, [], id="unset-manual-only"),
        pytest.param("  ", [], id="blank-manual-only"),
        pytest.param("Tue,Thu 02:00-04:00 Asia/Tokyo", ["Tue,Thu 02:00-04:00 Asia/Tokyo"],
                     id="one"),
        pytest.param("Sat 23:00-01:30 UTC; cron '0 */6 * * *' for 30m UTC",
                     ["Sat 23:00-01:30 UTC", "cron '0 */6 * * *' for 30m UTC"], id="two"),
    ],
)  # fmt: skip
def test_windows_from_the_environment(value: str | None, labels: list[str]) -> None:
    environ = {} if value is None else {WINDOWS_ENV: value}
    assert [w.label for w in windows(environ)] == labels


def test_a_bad_window_names_the_variable_and_the_fix() -> None:
    with pytest.raises(ParamError) as err:
        windows({WINDOWS_ENV: "Tue 02:00-04:00"})
    assert err.value.param == WINDOWS_ENV and "add an IANA time zone" in str(err.value)


def test_default_target() -> None:
    assert default_target({}) == ""
    assert default_target({TARGET_ENV: " 1-32-0 "}) == "1-32-0"
    with pytest.raises(ParamError) as err:
        default_target({TARGET_ENV: "1.32.0"})
    assert err.value.param == TARGET_ENV and "'1-32-0'" in str(err.value)


@pytest.mark.parametrize(
    ("param", "variable", "configured", "target", "source"),
    [
        pytest.param("1-32-0", "1-33-0", "1-34-0", "1-32-0", "param", id="run-param-first"),
        pytest.param("", "1-33-0", "1-34-0", "1-33-0", TARGET_VARIABLE, id="then-variable"),
        pytest.param(None, " ", "1-34-0", "1-34-0", "DAG default", id="then-configured"),
        pytest.param("", None, "", "", "none", id="nothing-anywhere"),
    ],
)  # fmt: skip
def test_with_target_precedence(
    param: str | None, variable: str | None, configured: str, target: str, source: str
) -> None:
    raw, found = with_target({"target_revision": param, "tag": "default"}, variable, configured)
    assert (raw["target_revision"] or "", source in found) == (target, True)
    assert raw["tag"] == "default"


def test_a_run_with_no_target_anywhere_says_where_to_set_it() -> None:
    raw, _ = with_target({}, None, "")
    with pytest.raises(ParamError) as err:
        parse_params(raw)
    assert TARGET_VARIABLE in str(err.value)


def parse(**overrides: Any) -> Any:
    return parse_params({"target_revision": "1-15-4", **overrides})


def test_new_param_defaults() -> None:
    params = parse()
    assert (params.window_minutes, params.approval_timeout_seconds) == (0, 1800)
    assert params.approval_default == "reject"


@pytest.mark.parametrize(
    ("overrides", "param", "fix"),
    [
        pytest.param({"window_minutes": -5}, "window_minutes", "0 or more", id="window-negative"),
        pytest.param({"window_minutes": 90.5}, "window_minutes", "use e.g. 0",
                     id="window-fraction"),
        pytest.param({"window_minutes": 7200 * 60}, "window_minutes", "120 for two hours",
                     id="window-seconds-typed-as-minutes"),
        pytest.param({"approval_timeout_seconds": 0}, "approval_timeout_seconds", "1 or more",
                     id="timeout-zero"),
        pytest.param({"approval_default": "Approve"}, "approval_default", "'reject' or 'approve'",
                     id="default-capitalised"),
    ],
)  # fmt: skip
def test_bad_new_params_name_the_param_and_the_fix(
    overrides: dict[str, Any], param: str, fix: str
) -> None:
    with pytest.raises(ParamError) as err:
        parse(**overrides)
    assert err.value.param == param and fix in str(err.value), str(err.value)


# --- what a trigger may point the worker at --------------------------------------------------


def test_by_default_only_the_dags_own_defaults_are_allowed() -> None:
    params = parse_params({"target_revision": "1-32-0"})
    check_allowed(params, allowed_targets({}))
    for change, name in (
        ({"prometheus_url": "http://elsewhere:9090"}, "prometheus_url"),
        ({"kubernetes_conn_id": "other_cluster"}, "kubernetes_conn_id"),
        ({"install_overlay": "/etc/passwd"}, "install_overlay"),
    ):
        with pytest.raises(ParamError) as refused:
            check_allowed(
                parse_params({"target_revision": "1-32-0", **change}), allowed_targets({})
            )
        assert refused.value.param == name


def test_the_deployments_own_defaults_are_allowed_in_place_of_the_dags() -> None:
    environ = {PARAM_DEFAULTS_ENV: '{"prometheus_url": "http://prom:9090"}'}
    ours = parse_params({"target_revision": "1-32-0", "prometheus_url": "http://prom:9090"})
    check_allowed(ours, allowed_targets(environ))
    with pytest.raises(ParamError):
        check_allowed(parse_params({"target_revision": "1-32-0"}), allowed_targets(environ))


def test_the_operator_lists_what_is_allowed(tmp_path: Any) -> None:
    overlays = tmp_path / "overlays"
    overlays.mkdir()
    (overlays / "small.yaml").write_text("spec: {}\n")
    environ = {
        PROMETHEUS_URLS_ENV: "http://prom-a:9090/, http://prom-b:9090",
        CONN_IDS_ENV: "cluster_a cluster_b",
        OVERLAY_DIR_ENV: str(overlays),
    }
    allowed = allowed_targets(environ)
    check_allowed(
        parse_params(
            {
                "target_revision": "1-32-0",
                "prometheus_url": "http://prom-a:9090",  # the list's trailing slash is ignored
                "kubernetes_conn_id": "cluster_b",
                "install_overlay": str(overlays / "small.yaml"),
            }
        ),
        allowed,
    )
    with pytest.raises(ParamError) as refused:
        check_allowed(
            parse_params({"target_revision": "1-32-0", "prometheus_url": "http://prom-c:9090"}),
            allowed,
        )
    assert PROMETHEUS_URLS_ENV in refused.value.fix and "http://prom-a:9090" in str(refused.value)


@pytest.mark.parametrize("overlay", ["../outside.yaml", "link.yaml", "missing.yaml"])
def test_an_overlay_must_be_a_file_inside_the_operators_folder(tmp_path: Any, overlay: str) -> None:
    overlays = tmp_path / "overlays"
    overlays.mkdir()
    (tmp_path / "outside.yaml").write_text("spec: {}\n")
    (overlays / "link.yaml").symlink_to(tmp_path / "outside.yaml")
    allowed = allowed_targets({OVERLAY_DIR_ENV: str(overlays)})
    params = parse_params({"target_revision": "1-32-0", "install_overlay": str(overlays / overlay)})
    with pytest.raises(ParamError) as refused:
        check_allowed(params, allowed)
    assert refused.value.param == "install_overlay" and OVERLAY_DIR_ENV in str(refused.value)
