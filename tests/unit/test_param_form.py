"""The trigger form and `validate` agree: a value the form accepts is not refused later.

Airflow checks a manual run's params against each Param's JSON schema in the trigger form;
`params.parse_params` checks them again in Python, adding only what a schema cannot say (a
param compared with another). For every param, a pool of probe values of its JSON type is
put to both: whatever the form's schema accepts, parse_params must accept too, unless it
refuses it for one of the reasons listed in CROSS_PARAM (each of which must name the param).
"""

from __future__ import annotations

from typing import Any

import jsonschema
import pytest

from istio_upgrade.errors import ParamError
from istio_upgrade.params import FORM_SECTIONS, PARAM_SPECS, form_params, parse_params

BASE = {"target_revision": "1-31-0"}

STRINGS = [
    *("", " ", "a", "A", "-a", "a-", "a.b", "a_b", "a b", "a" * 56, "a" * 57, "a" * 64),
    *("1-31-0", "1-30-0", "default", "prod-stable", "1.31.0", "1.30.0", "/usr/bin/istioctl"),
    *("1.31", "v1.31.0", "1.31.0-dev", "a\nb", "/bin/x\n"),
    *("1m", "1s1m", "1m30s", "90s", "0s", "1ms", "ms", "1h1h", "1d2h3m4s5ms", "1.5m"),
    *("ns/gw", "ns/gw.", "ns-/gw", "ns/gw.x", "ns/-gw", "/gw", "ns/", "Ns/gw", "ns/gw/x"),
    *("http://x", "https://prom.example:9090", "http://", "ftp://x", "x"),
    *("minimal", "ambient", "reject", "approve", "rollback", "stop", "local", "pod"),
    *("docker.io/istio/istioctl", "registry:5000/a/b", "Docker.io/a", "a//b", "a:1", "a@b"),
    *("kubernetes_default", "conn.id-1", "conn/id"),
]
INTEGERS = [-1, 0, 1, 2, 59, 10080, 10081, 10**9]
NUMBERS = [-0.5, 0, 0.001, 0.5, 0.99, 1, 1.5, 2, 500, 1e9]
ARRAYS: list[list[Any]] = [
    [],
    *([s] for s in STRINGS if s),
    ["a", "a"],
    ["a", "b"],
]
POOLS: dict[str, list[Any]] = {
    "string": STRINGS,
    "integer": INTEGERS,
    "number": NUMBERS,
    "boolean": [True, False],
    "array": ARRAYS,
    "null": [None],
}

# param -> words of parse_params' refusals that depend on another param or on where the run
# gets its target, which a per-param schema cannot express (the refusal may name the other).
CROSS_PARAM = {
    "target_revision": (
        "is required",  # empty in the form: a scheduled run takes the Variable's
        "spells no Istio version",  # istioctl (empty: the target's version) cannot be found
        "a tag cannot share a name with a revision",
    ),
    "current_revision": ("equals target_revision", "a tag cannot share a name with a revision"),
    "tag": ("a tag cannot share a name with a revision",),
    "istioctl": ("but target_revision",),
}


def probes() -> list[tuple[str, Any]]:
    found = []
    for name, spec in PARAM_SPECS.items():
        types = spec.type if isinstance(spec.type, list) else [spec.type]
        for kind in types:
            found += [(name, value) for value in POOLS[kind]]
    return found


def form_accepts(name: str, value: Any) -> bool:
    try:
        jsonschema.validate(value, PARAM_SPECS[name].json_schema())
    except jsonschema.ValidationError:
        return False
    return True


@pytest.mark.parametrize(("name", "value"), probes())
def test_what_the_form_accepts_validate_accepts(name: str, value: Any) -> None:
    if not form_accepts(name, value):
        return  # the form refuses it: a person cannot send it from the UI
    try:
        parse_params({**BASE, name: value})
    except ParamError as refused:
        reasons = CROSS_PARAM.get(name, ())
        assert any(words in str(refused) for words in reasons), (
            f"the form accepts {name}={value!r}, validate refuses it: {refused}"
        )


def test_the_probes_reach_both_sides() -> None:
    """Every param gets at least one probe the form accepts and one it refuses (except
    booleans and free text): a pool that misses a param would prove nothing about it."""
    accepted = {n for n, v in probes() if form_accepts(n, v)}
    refused = {n for n, v in probes() if not form_accepts(n, v)}
    assert accepted == set(PARAM_SPECS)
    free = {n for n, s in PARAM_SPECS.items() if s.type == "boolean" or not s.schema}
    assert set(PARAM_SPECS) - free <= refused


def test_every_param_is_in_one_section_of_the_form() -> None:
    listed = [name for names in FORM_SECTIONS.values() for name in names]
    assert sorted(listed) == sorted(PARAM_SPECS), "a param in no section, or in two"
    assert list(form_params()) == listed  # the form shows them section by section
