"""Offline evaluations on a remote backend: the Evaluate page's manager calls, answered by the server's API.

:class:`ClientEvaluations` gives a :class:`~personalizer.client.PersonalizerClient` the
methods of the engine's :class:`~personalizer.evaluation.Evaluations` that the page calls
(:class:`.capabilities.EvaluationJobs`), so one page shows evaluations run in process, by
an embedded ``serve`` or by the trainer of a scaled-out deployment (any replica answers).
Answers stay the wire's: the v1.1 ``Evaluation`` for ``create``/``get``, ``EvaluationDetails``
for ``details`` (no results: a listing on every rerun stays small).

Plain Python (no Streamlit).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..client import PersonalizerClient
from ..protocol import iso_utc

__all__ = ["ClientEvaluations"]


class ClientEvaluations:
    """The Evaluate page's evaluations manager over HTTP (thread-safe as the client is)."""

    def __init__(self, client: PersonalizerClient) -> None:
        self.client = client

    def create(self, evaluation_id: str | None, name: str, start: float, end: float,
               policies: Sequence[dict[str, str]]) -> dict[str, Any]:
        """Start an evaluation of [start, end) (epoch seconds); the server picks its id (``evaluation_id`` must
        be None: the v1.1 API creates by POST)."""
        if evaluation_id is not None:
            raise ValueError("a remote evaluation's id is the server's: pass None")
        return self.client.create_evaluation({
            "name": name, "startTime": iso_utc(start, timespec="milliseconds"),
            "endTime": iso_utc(end, timespec="milliseconds"),
            "policies": [{"name": p["name"], "arguments": p["arguments"]} for p in policies],
        })

    def get(self, evaluation_id: str) -> dict[str, Any]:
        """The evaluation as the v1.1 ``Evaluation`` (results once completed)."""
        return self.client.get_evaluation(evaluation_id)

    def details(self) -> list[dict[str, Any]]:
        """Every evaluation, oldest first, without results."""
        return self.client.list_evaluations()

    def delete(self, evaluation_id: str) -> None:
        """Delete it (a running one is cancelled)."""
        self.client.delete_evaluation(evaluation_id)

    def apply(self, evaluation_id: str, policy_name: str | None = None, *, who: str = "api") -> dict[str, Any]:
        """applyFromEvaluation; returns the policy now running.

        ``who`` is not sent: the API has no field for it, so the server records the change as the API's.
        """
        self.client.apply_from_evaluation(evaluation_id, policy_name)
        return self.client.get_policy()
