"""The run parameters, declared once: the Param table for the DAG, their checks and resolution."""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from istio_upgrade.contracts import Contract, allow
from istio_upgrade.errors import ParamError
from istio_upgrade.model import MeshSnapshot, WorkloadRef, points_at_tag, revision_version
from istio_upgrade.references import KeptBy, kept_by

DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
# PromQL durations: one or more number+unit pairs, largest unit first ("1m", "1m30s", "90s")
PROMQL_DURATION = re.compile(
    r"^(?:(\d+)y)?(?:(\d+)w)?(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?(?:(\d+)ms)?$"
)
ISTIO_VERSION = re.compile(r"^\d+\.\d+\.\d+(-[0-9A-Za-z.-]+)?$")
CONN_ID = re.compile(r"^[A-Za-z0-9_.-]{1,250}$")
# `istiod-<revision>` names a Service, which must be a DNS label: 63 - len("istiod-")
MAX_REVISION_LEN = 56
# A manual window longer than a week is a typo (seconds typed as minutes), not a window
MAX_WINDOW_MINUTES = 7 * 24 * 60
APPROVAL_DEFAULTS = ("reject", "approve")
ON_FAILURE = ("rollback", "stop")
ISTIOCTL_RUNNERS = ("local", "pod")
# An image repository without tag or digest: [registry[:port]/]path (distribution/reference).
IMAGE_REPOSITORY = re.compile(
    r"^(?:[a-zA-Z0-9.-]+(?::\d+)?/)?[a-z0-9]+(?:[._-][a-z0-9]+)*(?:/[a-z0-9]+(?:[._-][a-z0-9]+)*)*$"
)
# Where a run without target_revision finds it: this Airflow Variable, then the DAG's default
TARGET_VARIABLE = "istio_upgrade_target_revision"

# JSON-schema fragments shared by the table below (Airflow validates Params with jsonschema).
# The patterns are the ones the Python checks use, written to mean the same in Python's `re`
# and in the browser's (ECMAScript) regular expressions, so the form and `validate` agree
# (tests/unit/test_param_form.py).
_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_SUBDOMAIN = rf"{_LABEL}(\.{_LABEL})*"
# 'namespace/deployment': a label of at most 63 characters, then a DNS subdomain
GATEWAY = re.compile(rf"^(?=[^/]{{1,63}}/){_LABEL}/{_SUBDOMAIN}$")
# a PromQL duration with at least one non-zero figure
POSITIVE_DURATION = re.compile(r"^(?=.*[1-9])" + PROMQL_DURATION.pattern[1:])
# istioctl: empty, a full version, or a path (one line, not something like a bare '1.31')
ISTIOCTL_SPEC = re.compile(r"^(?:[0-9]+\.[0-9]+\.[0-9]+(-[0-9A-Za-z.-]+)?|(?!v?[0-9.]+$)[^\n]*)$")
ONE_PATH = re.compile(r"^[^\n\x00]*$")  # a file path on one line
# http(s)://host[:port][/path], no credentials, query or fragment
BASE_URL = re.compile(r"^https?://[^/?#\s:@]+(:[0-9]+)?(/[^?#\s]*)?$")
_REVISION_OR_EMPTY = {"pattern": rf"^$|^{_LABEL}$", "maxLength": MAX_REVISION_LEN}
_NAMESPACES = {
    "items": {"type": "string", "pattern": rf"^{_LABEL}$", "maxLength": 63},
    "uniqueItems": True,
}


@dataclass(frozen=True)
class ParamSpec:
    """One run parameter as the DAG declares it: `Param(default, **spec.param_kwargs())`."""

    default: Any
    type: str | list[str]
    title: str
    description: str
    schema: Mapping[str, Any] = field(default_factory=dict)  # further JSON-schema keywords

    def json_schema(self) -> dict[str, Any]:
        """The JSON schema the trigger form checks a value with."""
        return {"type": self.type, **self.schema}

    def param_kwargs(self) -> dict[str, Any]:
        """The keyword arguments of airflow's `Param` (default included), JSON schema only."""
        return {
            "default": self.default,
            "type": self.type,
            "title": self.title,
            "description": self.description,
            **self.schema,
        }


# Order is the order of the trigger form. Defaults must validate against their own schema:
# scheduled runs use them unchanged, and Airflow refuses a schedule whose defaults are invalid.
PARAM_SPECS: Mapping[str, ParamSpec] = MappingProxyType(
    {
        "target_revision": ParamSpec(
            "",
            "string",
            "Target revision",
            "Revision name of the control plane to move to, a DNS label such as '1-31-0' for "
            "Istio 1.31.0. Required: the maintenance-window schedule or the person triggering "
            "the run supplies it.",
            _REVISION_OR_EMPTY,
        ),
        "istioctl": ParamSpec(
            "",
            ["string", "null"],
            "istioctl",
            "Path of the istioctl binary that installs the target, or its version such as "
            "'1.31.0'. Empty: resolved from the version spelled by target_revision.",
            {"pattern": ISTIOCTL_SPEC.pattern},
        ),
        "current_revision": ParamSpec(
            "",
            ["string", "null"],
            "Current revision",
            "Revision the mesh runs now and that is removed at the end. Empty: the revision "
            "the tag points at (or, on a resumed run, the one other installed revision).",
            _REVISION_OR_EMPTY,
        ),
        "tag": ParamSpec(
            "default",
            "string",
            "Revision tag",
            "Revision tag that namespaces point at (label istio.io/rev=<tag>) and that the "
            "run moves to the target revision.",
            {"pattern": rf"^{_LABEL}$", "maxLength": 63},
        ),
        "canary_namespaces": ParamSpec(
            [],
            ["array", "null"],
            "Canary namespaces",
            "Namespaces restarted first and watched by the metric gate before the rest. "
            "Empty: the first namespace in name order that follows the tag (gateway "
            "namespaces are passed over when another exists).",
            _NAMESPACES,
        ),
        "include_namespaces": ParamSpec(
            [],
            ["array", "null"],
            "Namespaces to upgrade",
            "Namespaces whose workloads are restarted onto the target. Empty: every namespace "
            "that follows the tag (istio.io/rev=<tag>, or istio-injection=enabled when the "
            "tag is 'default').",
            _NAMESPACES,
        ),
        "exclude_namespaces": ParamSpec(
            [],
            "array",
            "Namespaces to leave alone",
            "Namespaces never restarted by this run. Their running pods keep the old proxy, "
            "so the old revision stays in use and is not removed.",
            _NAMESPACES,
        ),
        "gateways": ParamSpec(
            ["istio-ingress/istio-ingressgateway"],
            "array",
            "Gateways",
            "Injected gateway Deployments restarted in place right after the tag moves, as "
            "'namespace/deployment'. Empty list: the mesh has no gateway to restart.",
            {"items": {"type": "string", "pattern": GATEWAY.pattern}, "uniqueItems": True},
        ),
        "wave_concurrency": ParamSpec(
            2,
            "integer",
            "Namespaces per wave",
            "How many of the remaining namespaces are restarted at the same time after the "
            "canary passed.",
            {"minimum": 1},
        ),
        "min_success_rate": ParamSpec(
            0.99,
            "number",
            "Minimum success rate",
            "Lowest share of non-5xx responses (0..1) a canary namespace may serve, measured "
            "at the destination proxies.",
            {"minimum": 0, "maximum": 1},
        ),
        "max_p99_ms": ParamSpec(
            500,
            "number",
            "Maximum p99 latency (ms)",
            "Highest 99th-percentile request duration a canary namespace may show.",
            {"exclusiveMinimum": 0},
        ),
        "bake_seconds": ParamSpec(
            300,
            "integer",
            "Bake time (s)",
            "How long the canary must stay healthy under real traffic before the rest moves.",
            {"minimum": 0},
        ),
        "check_interval_seconds": ParamSpec(
            30,
            "integer",
            "Check interval (s)",
            "Time between two metric checks during the bake time.",
            {"minimum": 1},
        ),
        "failure_limit": ParamSpec(
            2,
            "integer",
            "Failed checks allowed",
            "Number of failed metric checks (breached, no data or Prometheus unreachable) "
            "that fails the gate and rolls back.",
            {"minimum": 1},
        ),
        "metric_window": ParamSpec(
            "1m",
            "string",
            "Metric window",
            "PromQL range each check averages over, such as '1m' or '90s'; keep it at least "
            "twice the Prometheus scrape interval.",
            {"pattern": POSITIVE_DURATION.pattern},
        ),
        "compare_baseline": ParamSpec(
            True,
            "boolean",
            "Compare with the baseline",
            "Also hold each canary namespace to its own figures from before its restart, "
            "whichever limit is stricter.",
        ),
        "baseline_success_drop": ParamSpec(
            0.01,
            "number",
            "Allowed success-rate drop",
            "How far below its own baseline success rate a canary namespace may fall.",
            {"minimum": 0, "maximum": 1},
        ),
        "baseline_p99_ratio": ParamSpec(
            1.5,
            "number",
            "Allowed p99 growth",
            "How many times its own baseline p99 latency a canary namespace may reach.",
            {"minimum": 1},
        ),
        "rollout_timeout_seconds": ParamSpec(
            600,
            "integer",
            "Rollout timeout (s)",
            "How long one restarted workload may take to finish its rollout before the run stops.",
            {"minimum": 1},
        ),
        "install_profile": ParamSpec(
            "minimal",
            "string",
            "Install profile",
            "istioctl profile for the new revision. 'minimal' installs istiod only, as a "
            "canary control plane should: gateways run in their own namespaces and move by "
            "restart.",
            {"enum": ["minimal", "default", "empty", "remote", "ambient"]},
        ),
        "install_overlay": ParamSpec(
            "",
            ["string", "null"],
            "Install overlay",
            "Path of an IstioOperator overlay file on the Airflow worker, passed to "
            "'istioctl install -f' (istioctl_runner 'local' only). Empty: istioctl's defaults "
            "plus the revision.",
            {"pattern": ONE_PATH.pattern},
        ),
        "dry_run": ParamSpec(
            False,
            "boolean",
            "Dry run",
            "Only print the plan (commands, canary, waves); change nothing in the cluster.",
        ),
        "remove_new_revision_on_rollback": ParamSpec(
            False,
            "boolean",
            "Remove the new revision on rollback",
            "After a rollback, uninstall the target control plane too (only when nothing uses "
            "it any more). Off: it stays installed for a later attempt.",
        ),
        "require_approval": ParamSpec(
            False,
            "boolean",
            "Require approval",
            "After the metric gate passes, wait for a person to approve before the remaining "
            "namespaces move.",
        ),
        "kubernetes_conn_id": ParamSpec(
            "kubernetes_default",
            "string",
            "Kubernetes connection",
            "Airflow connection id of the cluster to upgrade.",
            {"pattern": CONN_ID.pattern},
        ),
        "prometheus_url": ParamSpec(
            "http://127.0.0.1:19090",
            "string",
            "Prometheus URL",
            "Base URL of the Prometheus that scrapes the mesh's Istio standard metrics.",
            {"pattern": BASE_URL.pattern},
        ),
        "window_minutes": ParamSpec(
            0,
            "integer",
            "Window length (min)",
            "How long a manually triggered run may start new waves, counted from the start of "
            "the run: before each wave it compares the time left with how long a wave took, "
            "and pauses (mesh valid, old revision kept) when the next one would not fit. "
            "0: no limit of its own; a run of the maintenance-window schedule, or a manual "
            "run inside one of its windows, works until that window ends.",
            {"minimum": 0, "maximum": MAX_WINDOW_MINUTES},
        ),
        "approval_timeout_seconds": ParamSpec(
            1800,
            "integer",
            "Approval timeout (s)",
            "With require_approval: how long to wait for a person's answer before "
            "approval_default is taken.",
            {"minimum": 1},
        ),
        "approval_default": ParamSpec(
            "reject",
            "string",
            "Answer when nobody approves",
            "With require_approval: what counts as the answer once approval_timeout_seconds "
            "passed without one. 'reject' rolls the canary back (fail closed); 'approve' "
            "continues with the remaining namespaces.",
            {"enum": list(APPROVAL_DEFAULTS)},
        ),
        "on_failure": ParamSpec(
            "rollback",
            "string",
            "After a failure before the decision",
            "What the run does when a step fails after the tag moved and before the canary is "
            "judged (a gateway or canary rollout, a verification, the gate, the approval): "
            "'rollback' moves the tag back and restarts what moved, as a failed gate does; "
            "'stop' leaves the mesh as it is for someone to investigate. The run ends failed "
            "either way.",
            {"enum": list(ON_FAILURE)},
        ),
        "istioctl_runner": ParamSpec(
            "local",
            "string",
            "Where istioctl runs",
            "'local': the istioctl binary on the Airflow worker (see istioctl). 'pod': one pod "
            "per command in istio-system, from the image istioctl_image:<target version>, as "
            "ServiceAccount istio-canary-upgrade (include/rbac.yaml); istioctl's version then "
            "always equals the target's.",
            {"enum": list(ISTIOCTL_RUNNERS)},
        ),
        "istioctl_image": ParamSpec(
            "docker.io/istio/istioctl",
            "string",
            "istioctl image",
            "Image repository, without tag, for istioctl_runner 'pod': the official one or "
            "your registry's mirror of it. The tag is the Istio version.",
            {"pattern": IMAGE_REPOSITORY.pattern},
        ),
    }
)


# The trigger form's sections, in order (Airflow groups fields by their schema's `section`).
FORM_SECTIONS: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {
        "Target": (
            "target_revision",
            "current_revision",
            "tag",
            "istioctl",
            "install_profile",
            "install_overlay",
            "dry_run",
        ),
        "Canary and gate": (
            "canary_namespaces",
            "gateways",
            "rollout_timeout_seconds",
            "bake_seconds",
            "check_interval_seconds",
            "failure_limit",
            "metric_window",
            "min_success_rate",
            "max_p99_ms",
            "compare_baseline",
            "baseline_success_drop",
            "baseline_p99_ratio",
            "on_failure",
            "remove_new_revision_on_rollback",
        ),
        "Waves and window": (
            "include_namespaces",
            "exclude_namespaces",
            "wave_concurrency",
            "window_minutes",
        ),
        "Approval": ("require_approval", "approval_timeout_seconds", "approval_default"),
        "istioctl runner": ("istioctl_runner", "istioctl_image"),
        "Connections": ("kubernetes_conn_id", "prometheus_url"),
    }
)


def form_params(defaults: Mapping[str, Any] = MappingProxyType({})) -> dict[str, dict[str, Any]]:
    """Every param's `Param` keyword arguments, section by section in form order; `defaults`
    (the deployment's, config.param_defaults) replace the DAG's own."""
    return {
        name: {
            **PARAM_SPECS[name].param_kwargs(),
            "section": section,
            **({"default": defaults[name]} if name in defaults else {}),
        }
        for section, names in FORM_SECTIONS.items()
        for name in names
    }


@dataclass(frozen=True)
class UpgradeParams(Contract):
    """The validated run parameters; tasks receive this, never the raw `params` mapping."""

    target_revision: str
    istioctl: str
    current_revision: str  # empty: discovered from the tag
    tag: str
    canary_namespaces: tuple[str, ...]  # empty: discovered
    include_namespaces: tuple[str, ...]  # empty: every namespace following the tag
    exclude_namespaces: tuple[str, ...]
    gateways: tuple[str, ...]
    wave_concurrency: int
    min_success_rate: float
    max_p99_ms: float
    bake_seconds: int
    check_interval_seconds: int
    failure_limit: int
    metric_window: str
    compare_baseline: bool
    baseline_success_drop: float
    baseline_p99_ratio: float
    rollout_timeout_seconds: int
    install_profile: str
    install_overlay: str
    dry_run: bool
    remove_new_revision_on_rollback: bool
    require_approval: bool
    kubernetes_conn_id: str
    prometheus_url: str
    # Added with the maintenance-window and approval features; the defaults let a run that
    # started before them (its params in XCom without these keys) still be read back.
    window_minutes: int = 0
    approval_timeout_seconds: int = 1800
    approval_default: str = "reject"
    on_failure: str = "rollback"
    # Added with the in-cluster istioctl runner.
    istioctl_runner: str = "local"
    istioctl_image: str = "docker.io/istio/istioctl"

    @property
    def gateway_refs(self) -> tuple[WorkloadRef, ...]:
        """The gateways as workloads, for the restart and the rollout wait."""
        return tuple(WorkloadRef("Deployment", *g.split("/", 1)) for g in self.gateways)

    @property
    def istioctl_version(self) -> str | None:
        """The Istio version istioctl must have: given, or spelled by the target revision."""
        if ISTIO_VERSION.match(self.istioctl):
            return self.istioctl
        return None if self.istioctl else revision_version(self.target_revision)


def window_seconds(window: str) -> float | None:
    """Length of a PromQL duration in seconds (`1m30s` -> 90.0); None when it is not one."""
    match = PROMQL_DURATION.match(window)
    if not window or not match:
        return None
    units = (365 * 86400, 7 * 86400, 86400, 3600, 60, 1, 0.001)
    return float(sum(int(n) * u for n, u in zip(match.groups(), units, strict=True) if n))


def label_suggestion(value: str) -> str:
    """A DNS label close to what the user typed (`1.15.4` -> `1-15-4`), for the fix text."""
    cleaned = re.sub(r"[^a-z0-9-]+", "-", value.strip().lower()).strip("-")
    return cleaned[:63].rstrip("-") or "my-name"


# -- parse_params: everything that needs no cluster ------------------------------------------


def parse_params(raw: Mapping[str, Any]) -> UpgradeParams:
    """Check the raw Airflow params and return them typed; raise ParamError naming the fix."""
    unknown = sorted(set(raw) - set(PARAM_SPECS))
    if unknown:
        name = unknown[0]
        close = difflib.get_close_matches(name, PARAM_SPECS, n=1, cutoff=0.5)
        hint = f"did you mean {close[0]!r}?" if close else "the trigger form lists the known ones"
        raise ParamError(name, raw[name], "is not a parameter of this DAG", f"remove it; {hint}")
    get = _Reader(raw)
    target = get.text("target_revision")
    if not target:
        raise ParamError(
            "target_revision",
            target,
            "is required",
            "set it to the new revision, e.g. '1-31-0' (for scheduled runs: in the Airflow "
            f"Variable {TARGET_VARIABLE})",
        )
    _check_revision("target_revision", target)
    current = get.text("current_revision")
    if current:
        _check_revision("current_revision", current)
        if current == target:
            raise ParamError(
                "current_revision",
                current,
                "equals target_revision",
                "nothing to upgrade: set target_revision to the new revision, or leave "
                "current_revision empty to discover it",
            )
    tag = get.text("tag")
    _check_label("tag", tag)
    for other, rev in (("target_revision", target), ("current_revision", current)):
        if tag == rev:
            raise ParamError(
                "tag",
                tag,
                f"is also {other}",
                "a tag cannot share a name with a revision (istioctl refuses it); "
                "use the tag the namespaces point at, e.g. 'default'",
            )

    canary = get.names("canary_namespaces")
    include = get.names("include_namespaces")
    exclude = get.names("exclude_namespaces")
    for listed, names in (("canary_namespaces", canary), ("include_namespaces", include)):
        clash = sorted(set(names) & set(exclude))
        if clash:
            raise ParamError(
                listed,
                list(names),
                f"names {clash[0]!r}, which exclude_namespaces also names",
                f"drop {clash[0]!r} from one of the two lists",
            )

    runner = _check_runner(get.text("istioctl_runner"))
    istioctl = _check_istioctl(get.text("istioctl"), target)
    if runner == "pod" and istioctl and not ISTIO_VERSION.match(istioctl):
        raise ParamError(
            "istioctl",
            istioctl,
            "is a path, but istioctl_runner 'pod' runs istioctl from its image",
            "give a version such as '1.31.0' or leave it empty, or set istioctl_runner 'local'",
        )
    overlay = _check_overlay(get.text("install_overlay"))
    if runner == "pod" and overlay:
        raise ParamError(
            "install_overlay",
            overlay,
            "is a file on the Airflow worker, which the istioctl pod cannot read",
            "leave it empty with istioctl_runner 'pod', or set istioctl_runner 'local'",
        )

    return UpgradeParams(
        target_revision=target,
        istioctl=istioctl,
        istioctl_runner=runner,
        istioctl_image=_check_image(get.text("istioctl_image")),
        current_revision=current,
        tag=tag,
        canary_namespaces=canary,
        include_namespaces=include,
        exclude_namespaces=exclude,
        gateways=_check_gateways(get.strings("gateways")),
        wave_concurrency=get.integer("wave_concurrency", minimum=1),
        min_success_rate=get.number("min_success_rate", low=0.0, high=1.0),
        max_p99_ms=get.number("max_p99_ms", low=0.0, low_open=True),
        bake_seconds=get.integer("bake_seconds", minimum=0),
        check_interval_seconds=get.integer("check_interval_seconds", minimum=1),
        failure_limit=get.integer("failure_limit", minimum=1),
        metric_window=_check_window(get.text("metric_window")),
        compare_baseline=get.flag("compare_baseline"),
        baseline_success_drop=get.number("baseline_success_drop", low=0.0, high=1.0),
        baseline_p99_ratio=get.number("baseline_p99_ratio", low=1.0),
        rollout_timeout_seconds=get.integer("rollout_timeout_seconds", minimum=1),
        install_profile=_check_profile(get.text("install_profile")),
        install_overlay=overlay,
        dry_run=get.flag("dry_run"),
        remove_new_revision_on_rollback=get.flag("remove_new_revision_on_rollback"),
        require_approval=get.flag("require_approval"),
        kubernetes_conn_id=_check_conn_id(get.text("kubernetes_conn_id")),
        prometheus_url=_check_url(get.text("prometheus_url")),
        window_minutes=_check_window_minutes(get.integer("window_minutes", minimum=0)),
        approval_timeout_seconds=get.integer("approval_timeout_seconds", minimum=1),
        approval_default=_check_approval_default(get.text("approval_default")),
        on_failure=_check_on_failure(get.text("on_failure")),
    )


class _Reader:
    """Reads one raw param with its default and its JSON type, raising ParamError on a misfit."""

    def __init__(self, raw: Mapping[str, Any]) -> None:
        self.raw = raw

    def _value(self, name: str) -> Any:
        value = self.raw.get(name, PARAM_SPECS[name].default)
        # null means "use the default" (the trigger form sends null for a cleared field)
        return PARAM_SPECS[name].default if value is None else value

    def text(self, name: str) -> str:
        value = self._value(name)
        if not isinstance(value, str):
            raise ParamError(name, value, "is not a string", f"give a string, e.g. {_eg(name)}")
        return value.strip()

    def strings(self, name: str) -> tuple[str, ...]:
        value = self._value(name)
        if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
            raise ParamError(
                name, value, "is not a list of strings", f"give a list, e.g. {_eg(name)}"
            )
        items = tuple(v.strip() for v in value)
        dupes = sorted({v for v in items if items.count(v) > 1})
        if dupes:
            raise ParamError(name, value, f"names {dupes[0]!r} twice", "list each entry once")
        return items

    def names(self, name: str) -> tuple[str, ...]:
        items = self.strings(name)
        for item in items:
            if not DNS_LABEL.match(item) or len(item) > 63:
                raise ParamError(
                    name,
                    list(items),
                    f"has {item!r}, which is not a namespace name (DNS-1123 label)",
                    f"use e.g. {label_suggestion(item)!r}",
                )
        return items

    def integer(self, name: str, minimum: int) -> int:
        value = self._value(name)
        # JSON numbers may arrive as 300.0; a bool is an int to Python but not to the user
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ParamError(name, value, "is not a whole number", f"use e.g. {_eg(name)}")
        if value < minimum:
            raise ParamError(name, value, f"is below {minimum}", f"use {minimum} or more")
        return value

    def number(
        self, name: str, low: float, high: float | None = None, low_open: bool = False
    ) -> float:
        value = self._value(name)
        finite = isinstance(value, int | float) and math.isfinite(value)
        if isinstance(value, bool) or not finite:
            raise ParamError(name, value, "is not a finite number", f"use e.g. {_eg(name)}")
        too_low = value <= low if low_open else value < low
        if too_low or (high is not None and value > high):
            if high is not None:
                allowed = f"between {low:g} and {high:g}"
            else:
                allowed = f"{'above' if low_open else 'at least'} {low:g}"
            raise ParamError(name, value, f"is not {allowed}", f"use e.g. {_eg(name)}")
        return float(value)

    def flag(self, name: str) -> bool:
        value = self._value(name)
        if not isinstance(value, bool):
            raise ParamError(name, value, "is not true or false", "use a JSON boolean")
        return value


def _eg(name: str) -> str:
    return repr(PARAM_SPECS[name].default)


def _check_label(name: str, value: str, max_len: int = 63) -> None:
    if not DNS_LABEL.match(value):
        example = label_suggestion(value) if value else PARAM_SPECS[name].default or "my-name"
        raise ParamError(name, value, "is not a DNS-1123 label", f"use e.g. {example!r}")
    if len(value) > max_len:
        raise ParamError(
            name, value, f"is longer than {max_len} characters", f"use at most {max_len}"
        )


def _check_revision(name: str, value: str) -> None:
    _check_label(name, value, MAX_REVISION_LEN)


def check_revision(name: str, value: str) -> str:
    """A revision name as `target_revision` takes it, for settings outside the params."""
    _check_revision(name, value)
    return value


def _check_istioctl(value: str, target: str) -> str:
    """A path, a version matching the target, or empty when the target spells its version."""
    spelled = revision_version(target)
    if not value:
        if spelled is None:
            raise ParamError(
                "istioctl",
                value,
                f"cannot be resolved: target_revision {target!r} spells no Istio version",
                "set istioctl to a binary path or a version such as '1.31.0'",
            )
        return value
    if ISTIO_VERSION.match(value):
        if spelled is not None and spelled != value:
            raise ParamError(
                "istioctl",
                value,
                f"would install Istio {value}, but target_revision {target!r} says {spelled}",
                f"set istioctl to {spelled!r} or target_revision to {label_suggestion(value)!r}",
            )
        return value
    if not ISTIOCTL_SPEC.fullmatch(value):
        raise ParamError(
            "istioctl",
            value,
            "is neither a version nor a path",
            "use a full version such as '1.31.0' or a path such as '/usr/local/bin/istioctl'",
        )
    return value


def _check_gateways(items: tuple[str, ...]) -> tuple[str, ...]:
    for item in items:
        if not GATEWAY.match(item):
            raise ParamError(
                "gateways",
                list(items),
                f"has {item!r}, which is not 'namespace/deployment'",
                "use e.g. 'istio-ingress/istio-ingressgateway'",
            )
    return items


def _check_window(value: str) -> str:
    seconds = window_seconds(value)
    if not seconds:
        raise ParamError(
            "metric_window",
            value,
            "is not a positive PromQL duration",
            "use e.g. '1m', '90s' or '1m30s' (units ms, s, m, h, d, w, y, largest first)",
        )
    return value


def _check_overlay(value: str) -> str:
    if not ONE_PATH.match(value):
        raise ParamError(
            "install_overlay", value, "is not one file path", "give e.g. '/opt/overlay.yaml'"
        )
    return value


def _check_profile(value: str) -> str:
    allowed = PARAM_SPECS["install_profile"].schema["enum"]
    if value not in allowed:
        raise ParamError(
            "install_profile",
            value,
            "is not an istioctl profile",
            f"use one of {', '.join(allowed)} (usually 'minimal')",
        )
    return value


def _check_conn_id(value: str) -> str:
    if not CONN_ID.match(value):
        raise ParamError(
            "kubernetes_conn_id",
            value,
            "is not an Airflow connection id",
            "use letters, digits, '_', '.', '-', e.g. 'kubernetes_default'",
        )
    return value


def _check_url(value: str) -> str:
    if not BASE_URL.match(value):
        raise ParamError(
            "prometheus_url",
            value,
            "is not an http(s) base URL",
            "use e.g. 'http://prometheus.monitoring:9090' (no query string)",
        )
    return value.rstrip("/")


def _check_window_minutes(value: int) -> int:
    if value > MAX_WINDOW_MINUTES:
        raise ParamError(
            "window_minutes",
            value,
            f"is more than a week ({MAX_WINDOW_MINUTES} minutes)",
            "give the window in minutes, e.g. 120 for two hours, or 0 for no limit",
        )
    return value


def _check_runner(value: str) -> str:
    if value not in ISTIOCTL_RUNNERS:
        raise ParamError(
            "istioctl_runner",
            value,
            "is not a place istioctl can run",
            "use 'local' (the worker's binary) or 'pod' (the istioctl image in the cluster)",
        )
    return value


def _check_image(value: str) -> str:
    if not IMAGE_REPOSITORY.match(value):
        raise ParamError(
            "istioctl_image",
            value,
            "is not an image repository without tag",
            "use e.g. 'docker.io/istio/istioctl' or 'registry.example.com/mirror/istioctl'; "
            "the tag comes from the Istio version",
        )
    return value


def _check_approval_default(value: str) -> str:
    if value not in APPROVAL_DEFAULTS:
        raise ParamError(
            "approval_default",
            value,
            "is not an answer the approval can default to",
            f"use {' or '.join(repr(a) for a in APPROVAL_DEFAULTS)} ('reject' fails closed)",
        )
    return value


def _check_on_failure(value: str) -> str:
    if value not in ON_FAILURE:
        raise ParamError(
            "on_failure",
            value,
            "is not a way to handle a failure before the decision",
            "use 'rollback' (move the tag back: the mesh is safe) or 'stop' (leave it for "
            "someone to investigate)",
        )
    return value


def with_target(
    raw: Mapping[str, Any], variable: str | None, configured: str
) -> tuple[dict[str, Any], str]:
    """The raw params with target_revision filled in, and where it came from.

    Precedence: the run's own param (a manual trigger) > the Airflow Variable
    `istio_upgrade_target_revision` > the DAG's configured default. A scheduled run carries
    the Param defaults, so its target comes from the Variable or the configured default.
    """
    given = raw.get("target_revision")
    if isinstance(given, str) and given.strip():
        return dict(raw), "param"
    for value, source in ((variable, f"Variable {TARGET_VARIABLE}"), (configured, "DAG default")):
        if value and value.strip():
            return {**raw, "target_revision": value.strip()}, source
    return dict(raw), "none"


# -- check_against_cluster: the discovered defaults, resolved against one snapshot ------------


@dataclass(frozen=True)
class ResolvedParams(Contract):
    """The params with every "discover" default filled in from the cluster as it was: what
    validate hands every task after it."""

    params: UpgradeParams
    current_revision: str
    namespaces: tuple[str, ...]  # every namespace this run moves, canaries included, by name
    canary: tuple[str, ...]
    excluded: tuple[str, ...]  # follow the tag but excluded: they keep the old revision in use
    resumed: bool  # the tag already pointed at the target: an earlier run got that far
    # When this run must stop starting waves (ISO 8601, UTC) and why; None: no limit
    window_end: str | None = None
    window_basis: str = "no window"
    # Who holds the cluster's upgrade lock for this run (upgrade_lock); "": no lock (dry run)
    lock_holder: str = ""
    # What will keep the old revision in use after the run, known before it started
    kept_by: KeptBy = field(default_factory=KeptBy)

    @property
    def target_revision(self) -> str:
        return self.params.target_revision

    @property
    def tag(self) -> str:
        return self.params.tag


def check_against_cluster(params: UpgradeParams, snapshot: MeshSnapshot) -> ResolvedParams:
    """Resolve the discovered defaults against the cluster; ParamError when they cannot fit it."""
    current, resumed = _resolve_current(params, snapshot)
    tag = params.tag
    known = {ns.name: ns for ns in snapshot.namespaces}
    following = sorted(name for name, ns in known.items() if points_at_tag(ns.labels, tag))

    def check_follows(param: str, names: tuple[str, ...]) -> None:
        for name in names:
            ns = known.get(name)
            if ns is None:
                raise ParamError(
                    param,
                    list(names),
                    f"names {name!r}, which is not a namespace of the mesh",
                    f"check the spelling; namespaces following tag {tag!r}: {_few(following)}",
                )
            if not points_at_tag(ns.labels, tag):
                raise ParamError(
                    param,
                    list(names),
                    f"names {name!r}, which does not follow tag {tag!r} (its labels: "
                    f"{_mesh_labels(ns.labels)}), so a restart would not move it",
                    f"label it: kubectl label namespace {name} istio.io/rev={tag} --overwrite; "
                    "or drop it from the list",
                )

    check_follows("include_namespaces", params.include_namespaces)
    check_follows("canary_namespaces", params.canary_namespaces)
    for name in params.exclude_namespaces:
        if name not in known:
            # fail closed: a misspelt exclusion would restart the namespace meant to be spared
            raise ParamError(
                "exclude_namespaces",
                list(params.exclude_namespaces),
                f"names {name!r}, which is not a namespace of the mesh",
                "check the spelling, or drop it from the list",
            )
    _check_gateways_exist(params, snapshot)

    chosen = params.include_namespaces or tuple(following)
    scope = sorted(set(chosen) | set(params.canary_namespaces))
    namespaces = tuple(n for n in scope if n not in params.exclude_namespaces)
    excluded = tuple(n for n in following if n in params.exclude_namespaces)
    canary = params.canary_namespaces or _default_canary(namespaces, params)
    if not canary:
        raise ParamError(
            "canary_namespaces",
            [],
            f"cannot be discovered: no namespace left to upgrade follows tag {tag!r}",
            f"label one (kubectl label namespace NAME istio.io/rev={tag}) or check "
            "include_namespaces / exclude_namespaces",
        )
    return ResolvedParams(
        params=params,
        current_revision=current,
        namespaces=namespaces,
        canary=tuple(sorted(canary)),
        excluded=excluded,
        resumed=resumed,
        kept_by=kept_by(snapshot, current, tag, namespaces),
    )


def _resolve_current(params: UpgradeParams, snapshot: MeshSnapshot) -> tuple[str, bool]:
    """The revision to move away from, and whether an earlier run already moved the tag."""
    tag, target = params.tag, params.target_revision
    installed = sorted(c.revision for c in snapshot.control_planes)
    found = snapshot.tag(tag)
    if found is None:
        known = sorted(t.name for t in snapshot.tags)
        raise ParamError(
            "tag",
            tag,
            f"is not a revision tag of the cluster (no webhook istio-revision-tag-{tag}); "
            f"tags found: {_few(known)}",
            f"use one of those, or create it: istioctl tag set {tag} --revision <current> -y",
        )
    if params.current_revision:
        current = params.current_revision
        if snapshot.control_plane(current) is None:
            raise ParamError(
                "current_revision",
                current,
                f"is not an installed control plane (installed: {_few(installed)})",
                "leave it empty to use the revision the tag points at; if the upgrade "
                "already finished, there is nothing to do",
            )
        if found.revision not in (current, target):
            raise ParamError(
                "current_revision",
                current,
                f"does not match tag {tag!r}, which points at {found.revision!r}",
                f"leave current_revision empty or set it to {found.revision!r}",
            )
        return current, found.revision == target
    if found.revision != target:
        if snapshot.control_plane(found.revision) is None:
            raise ParamError(
                "tag",
                tag,
                f"points at revision {found.revision!r}, which has no control plane installed "
                f"(installed: {_few(installed)})",
                "repair the tag first (istioctl tag set ... --overwrite -y) or set "
                "current_revision",
            )
        return found.revision, False
    # the tag already points at the target: a resumed run, moving away from the one other revision
    others = [r for r in installed if r != target]
    if not others:
        raise ParamError(
            "target_revision",
            target,
            f"is already the revision of tag {tag!r} and no other control plane is installed",
            "nothing to upgrade: choose a newer target_revision",
        )
    if len(others) > 1:
        raise ParamError(
            "current_revision",
            "",
            f"cannot be discovered: tag {tag!r} already points at the target and several "
            f"revisions are installed ({_few(others)})",
            "set current_revision to the one to remove",
        )
    return others[0], True


def _check_gateways_exist(params: UpgradeParams, snapshot: MeshSnapshot) -> None:
    for gateway, ref in zip(params.gateways, params.gateway_refs, strict=True):
        ns = snapshot.namespace(ref.namespace)
        if ns is None:
            raise ParamError(
                "gateways",
                list(params.gateways),
                f"has {gateway!r}, but namespace {ref.namespace!r} is not in the mesh",
                "fix the namespace, or set gateways to [] when the mesh has no gateway",
            )
        if ref not in ns.workloads:
            names = sorted(w.name for w in ns.workloads if w.kind == "Deployment")
            raise ParamError(
                "gateways",
                list(params.gateways),
                f"has {gateway!r}, but namespace {ref.namespace!r} has no such Deployment "
                f"(found: {_few(names)})",
                "use one of those, or set gateways to [] when the mesh has no gateway",
            )


def _default_canary(namespaces: tuple[str, ...], params: UpgradeParams) -> tuple[str, ...]:
    """The first namespace in name order, passing over gateway namespaces when another exists."""
    # gateways already move right after the tag; the canary should add application traffic
    gateway_ns = {ref.namespace for ref in params.gateway_refs}
    plain = [n for n in namespaces if n not in gateway_ns]
    first = (plain or list(namespaces))[:1]
    return tuple(first)


def _few(names: list[str]) -> str:
    """A short list for a message: the first five names, then a count."""
    if not names:
        return "none"
    more = f" and {len(names) - 5} more" if len(names) > 5 else ""
    return ", ".join(names[:5]) + more


def _mesh_labels(labels: Mapping[str, str]) -> str:
    shown = {k: v for k, v in labels.items() if k in ("istio.io/rev", "istio-injection")}
    return ", ".join(f"{k}={v}" for k, v in sorted(shown.items())) or "none"


allow(UpgradeParams, ResolvedParams)
