"""What the dashboard can do with a backend beyond the Personalizer API: decided here, and only here.

Every backend (the embedded engine, the HTTP client) satisfies
:class:`~personalizer.interface.Personalizer`, and the pages call that API
directly. A few features need the engine in this process, which the client does
not offer: reading its event log in process (apprentice metrics), the model's
greedy pick (exploration labels on the cards) and the automatic optimization's
state. Whether a backend has them is one typed decision, :func:`local_engine`
(the runtime-checkable :class:`~personalizer.interface.LocalEngine` Protocol), so
no page asks an object what it happens to have. Jobs run where the log is: the
engine's managers in process, the server's through its API
(:class:`EvaluationJobs`, :class:`FeatureImportanceJobs`; ``backend`` picks one);
log trends and lift read any backend's log through ``log_events``.

Plain Python (no Streamlit), so the plain modules (``ranking``) use it too.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol, runtime_checkable

from ..interface import LocalEngine, Personalizer

__all__ = ["EvaluationJobs", "FeatureImportanceJobs", "TopPicks", "local_engine", "top_picks"]

#: The model's top pick per slot for a rank request (exploration off, nothing logged).
TopPicks = Callable[[dict[str, Any]], dict[str, str]]


@runtime_checkable
class FeatureImportanceJobs(Protocol):
    """Who runs feature-importance reports: the engine's job manager, or a client of a server that runs them."""

    def create_feature_importance(self, feature_importance_id: str, contract: dict[str, Any]) -> dict[str, Any]: ...

    def get_feature_importance(self, feature_importance_id: str) -> dict[str, Any]: ...

    def list_feature_importances(self) -> list[dict[str, Any]]: ...

    def delete_feature_importance(self, feature_importance_id: str) -> None: ...


@runtime_checkable
class EvaluationJobs(Protocol):
    """Who runs offline evaluations for the Evaluate page: the engine's ``Evaluations`` manager, or an
    adapter over a client of a server that runs them (``remote_jobs.ClientEvaluations``).

    ``create``/``get`` answer the v1.1 ``Evaluation`` (status pending, completed, failed,
    optimalPolicyApplied...; ``policyResults`` once completed); ``details`` every evaluation oldest
    first without results (the 2022 listing: ``id``, ``name``, ``creationTime``, ``status`` in its words:
    Running, Succeeded...), cheap enough for every rerun; ``apply`` returns the policy now running.
    Errors are ``PersonalizerError`` with the service's codes.
    """

    def create(self, evaluation_id: str | None, name: str, start: float, end: float,
               policies: Sequence[dict[str, str]]) -> dict[str, Any]: ...

    def get(self, evaluation_id: str) -> dict[str, Any]: ...

    def details(self) -> list[dict[str, Any]]: ...

    def delete(self, evaluation_id: str) -> None: ...

    def apply(self, evaluation_id: str, policy_name: str | None = None, *, who: str = "api") -> dict[str, Any]: ...


def local_engine(backend: Personalizer) -> LocalEngine | None:
    """The backend as the engine in this process (event log, greedy, job records), or None for a remote one."""
    return backend if isinstance(backend, LocalEngine) else None


def top_picks(backend: Personalizer) -> TopPicks | None:
    """The model's greedy pick per slot when the backend can tell it (the embedded engine), else None."""
    engine = local_engine(backend)
    return None if engine is None else engine.greedy
