"""What a Personalizer is, as types: the operations every backend offers, and the local engine's extras.

``Personalizer`` is the wire API: the local engine (``engine.LocalPersonalizer``) and the
HTTP client (``client.PersonalizerClient``) both satisfy it, so code written against it
runs in-process or against a server alike (``tests/test_contract_both_backends.py``
checks both). ``LocalEngine`` adds what only the engine in this process can do: read its
event log, keep job records beside it, and the settings the server tunes. Modules that
need those (offline evaluation, feature importances, automatic optimization, the server)
type against ``LocalEngine`` instead of asking an object what it happens to have.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from .logexport import LogPage

__all__ = ["JobRecords", "LocalEngine", "Personalizer"]


@runtime_checkable
class Personalizer(Protocol):
    """The Personalizer API: rank, reward, configuration, policy, model and log operations."""

    def rank(self, request: dict[str, Any], *, explain: bool = False) -> dict[str, Any]: ...

    def rank_single(self, request: dict[str, Any]) -> dict[str, Any]: ...

    def reward(self, event_id: str, reward: dict[str, Any]) -> dict[str, Any]: ...

    def reward_single(self, event_id: str, reward: dict[str, Any]) -> dict[str, Any]: ...

    def activate(self, event_id: str) -> dict[str, Any]: ...

    def explain_event(self, event_id: str) -> dict[str, Any]: ...

    def get_service_configuration(self) -> dict[str, Any]: ...

    def update_service_configuration(self, configuration: dict[str, Any]) -> dict[str, Any]: ...

    def get_policy(self) -> dict[str, Any]: ...

    def update_policy(self, policy: dict[str, Any]) -> dict[str, Any]: ...

    def reset_policy(self) -> dict[str, Any]: ...

    def policy_history(self) -> list[dict[str, Any]]: ...

    def rollback_policy(self, change_id: str) -> dict[str, Any]: ...

    def export_model(self) -> bytes: ...

    def import_model(self, model: bytes) -> None: ...

    def reset_model(self) -> None: ...

    def model_properties(self) -> dict[str, Any]: ...

    def log_properties(self) -> dict[str, Any]: ...

    def delete_logs(self) -> int: ...

    def log_events(self, start: str | None = None, end: str | None = None, after: str | None = None,
                   top: int | None = None) -> dict[str, Any]: ...

    def iter_log_events(self, start: str | None = None, end: str | None = None, after: str | None = None,
                        top: int | None = None) -> Iterator[dict[str, Any]]: ...

    def stats(self) -> dict[str, Any]: ...

    def close(self) -> None: ...


@runtime_checkable
class JobRecords(Protocol):
    """Job records (evaluations, feature importances) kept in the engine's database, by kind."""

    def records(self, kind: str) -> list[tuple[str, str]]: ...

    def save_record(self, kind: str, record_id: str, created: float, record_json: str) -> None: ...

    def delete_record(self, kind: str, record_id: str) -> bool: ...


@runtime_checkable
class LocalEngine(Personalizer, JobRecords, Protocol):
    """The engine in this process: the API plus its event log and the settings the server tunes."""

    home: Path
    #: Seconds a call waits for the engine before a 503 (None: as long as it takes).
    lock_timeout: float | None
    #: Largest estimated feature count of a rank request; None: no limit.
    max_rank_features: int | None

    def events(self, start: float | None = None, end: float | None = None) -> Sequence[Any]: ...

    def log_page(self, start: str | None = None, end: str | None = None, after: str | None = None,
                 top: int | None = None) -> LogPage: ...

    def greedy(self, request: dict[str, Any]) -> dict[str, str]: ...

    def process_due(self) -> int: ...

    def policy_change(self, change_id: str | int) -> dict[str, Any]: ...

    def rollback_policy(self, change_id: str, *, who: str = "api") -> dict[str, Any]:
        """The API's rollback, recording who asked (``person`` from the dashboard)."""
        ...

    def auto_optimization_state(self) -> dict[str, Any]: ...

    def save_auto_optimization_state(self, state: dict[str, Any]) -> None: ...
