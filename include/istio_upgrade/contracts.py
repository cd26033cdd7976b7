"""What one task hands another: typed values that Airflow stores in XCom and rebuilds.

A dataclass with `Contract` as a base reaches the next task as itself, not as a dict:
Airflow's serde stores it through `serialize` and rebuilds it through `deserialize`, and
pydantic does both from the dataclass's fields (nested dataclasses, tuples and enums
included), so no class writes its own pair. `to_json` and `from_json` are the same
conversion for where a plain JSON value is needed: trigger arguments and events, the
run's Lease notes.

Airflow rebuilds a class from XCom only when it is on its allow-list; `allow` puts the
classes there in every process that imports the module defining them (a worker parses the
DAG, which imports them all; the triggerer imports the triggers).
"""

from __future__ import annotations

from typing import Any, ClassVar, Self

from pydantic import TypeAdapter

_ADAPTERS: dict[type, TypeAdapter[Any]] = {}  # building one costs more than a conversion


def _adapter(cls: type) -> TypeAdapter[Any]:
    found = _ADAPTERS.get(cls)
    if found is None:
        found = _ADAPTERS[cls] = TypeAdapter(cls)
    return found


class Contract:
    """Base of a dataclass passed between tasks (see the module's docstring)."""

    # Airflow's serde stores it with the value and refuses a value newer than the class.
    __version__: ClassVar[int] = 1

    def to_json(self) -> dict[str, Any]:
        return dict(_adapter(type(self)).dump_python(self, mode="json"))

    @classmethod
    def from_json(cls, data: Any) -> Self:
        built: Self = _adapter(cls).validate_python(data)
        return built

    # The two names Airflow's serde calls.
    def serialize(self) -> dict[str, Any]:
        return self.to_json()

    @classmethod
    def deserialize(cls, data: Any, version: int) -> Self:
        return cls.from_json(data)


def allow(*classes: type[Contract]) -> None:
    """Let Airflow rebuild these classes from XCom in this process; call it at the end of
    the module that defines them (Airflow checks that the name imports back to the class).
    Without Airflow (the library on its own) there is nothing to register with."""
    try:
        from airflow.sdk.serde import allow_class
    except ImportError:
        return

    for cls in classes:
        allow_class(cls)
