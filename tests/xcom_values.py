"""XCom values as a REST client reads them: the JSON Airflow stores, typed values unwrapped."""

from __future__ import annotations

from typing import Any

# How Airflow's serde stores a typed value (istio_upgrade.contracts.Contract, a tuple).
CLASSNAME, DATA = "__classname__", "__data__"


def plain(value: Any) -> Any:
    """`value` with every `{"__classname__": ..., "__data__": ...}` replaced by its data, so
    a test reads a typed value (a ResolvedParams, a list of WaveItems) by its JSON fields."""
    if isinstance(value, dict):
        if CLASSNAME in value:
            return plain(value.get(DATA))
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value
