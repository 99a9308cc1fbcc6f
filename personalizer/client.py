"""A ``requests`` client for any Personalizer-compatible endpoint (this project's server or a look-alike).

``PersonalizerClient`` offers the embedded engine's methods with the same dicts in
and out and the same ``PersonalizerError``, so code written against one backend
runs against the other. The endpoint may be given with or without a trailing
slash or a ``/personalizer`` suffix, so the seed quickstart's URL-joining bug
cannot happen here.

Retries are urllib3's ``Retry`` on the session's adapters, bounded (``retries``
extra attempts, exponential ``backoff``, ``Retry-After`` honoured up to 30 s), and
happen only when repeating the call cannot do harm: on 429/503 answers and on
connections that were never made, for every call; on ambiguous failures (timeout
or connection lost after sending) only for calls that are safe to repeat. Two
sessions carry the two policies, because whether a call is safe depends on the
call, not on its HTTP method (a rank POST is safe, a policy PUT is not). Rank is
made safe by design: a request without an ``eventId`` gets one generated here,
and the server answers a repeated (eventId, request) with the first answer
instead of ranking twice.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote, urlencode

import requests
from requests.adapters import HTTPAdapter
from urllib3.exceptions import MaxRetryError, ReadTimeoutError
from urllib3.util.retry import Retry

from .contract import PersonalizerError
from .logexport import iterate_pages
from .protocol import API_VERSION, DELETED_HEADER, KEY_HEADER, STATUS_HEADER, code_of_status, new_event_id

__all__ = ["API_VERSION", "PersonalizerClient", "normalize_endpoint"]

_API_QUERY = f"?api-version={API_VERSION}"
#: The versioned path evaluations are created and read on: its v1.1 ``Evaluation`` carries the results
#: (per-policy estimates and intervals, per slot), which the 2022 API's answers leave out.
EVALUATIONS_VERSION = "v1.1-preview.3"
_RETRY_STATUSES = frozenset({429, 503})
_MAX_RETRY_AFTER = 30
_NO_BODY: Any = object()  # a JSON body of null is still a body
_SUFFIX = re.compile(r"/personalizer(/v\d[^/]*)?$", re.IGNORECASE)


def normalize_endpoint(endpoint: str) -> str:
    """The service root (``scheme://host[:port][/prefix]``, no trailing slash) of an endpoint URL.

    Accepts ``http://host:8000``, ``http://host:8000/``, ``.../personalizer`` and
    ``.../personalizer/v1.1-preview.1/``; raises ValueError for anything but http(s).
    """
    url = (endpoint or "").strip().rstrip("/")
    if not re.match(r"^https?://[^/\s]+", url, re.IGNORECASE):
        raise ValueError(f"endpoint must be an http:// or https:// URL, not {endpoint!r}")
    return _SUFFIX.sub("", url).rstrip("/")


class PersonalizerClient:
    """Personalizer over HTTP with the embedded engine's interface.

    ``endpoint``: the server's base URL. ``key``: sent as ``Ocp-Apim-Subscription-Key``
    (never shown in messages or repr). ``timeout``: seconds per attempt. ``retries``:
    extra attempts for retryable failures, with urllib3's exponential backoff of factor
    ``backoff`` (or the server's Retry-After). ``session``: a ``requests.Session`` to
    reuse for every call; its own adapters then decide about retries, and the client
    does not close it.
    """

    def __init__(
        self,
        endpoint: str,
        key: str | None = None,
        *,
        timeout: float = 10.0,
        retries: int = 3,
        backoff: float = 0.2,
        session: requests.Session | None = None,
    ) -> None:
        self.endpoint = normalize_endpoint(endpoint)
        self._base = f"{self.endpoint}/personalizer"
        self._key = key or None
        self.timeout = timeout
        self.retries = max(0, int(retries))
        self.backoff = max(0.0, float(backoff))
        self._own_session = session is None
        if session is None:
            self.session = _session_for(self.endpoint, _retry(self.retries, self.backoff, safe=True))
            self._unsafe_session = _session_for(self.endpoint, _retry(self.retries, self.backoff, safe=False))
        else:
            self.session = self._unsafe_session = session

    def __repr__(self) -> str:
        return f"PersonalizerClient({self.endpoint!r}, key={'***' if self._key else None})"

    # ------------------------------------------------------------ the loop
    def rank(self, request: dict[str, Any], *, explain: bool = False) -> dict[str, Any]:
        """Multi-slot rank: ``MultiSlotRankRequest`` dict -> ``MultiSlotRankResponse`` dict (201).

        ``explain``: each slot also carries an ``explanation`` (this project's server extension).
        """
        body = self._with_event_id(request)
        return _json_of(self._call("POST", "/multislot/rank", json_body=body, safe=True,
                                   query="&explain=true" if explain else ""))

    def reward(self, event_id: str, reward: dict[str, Any]) -> dict[str, Any]:
        """Per-slot rewards ``{"reward": [{"slotId", "value"}]}``; returns the receipt ``{"eventId", "status"}``.

        Retried when ambiguous: with the default ``earliest`` aggregation a repeated reward
        changes nothing that was learned (with ``sum`` a repeat after a lost answer could count twice).
        """
        resp = self._call("POST", f"/multislot/events/{_quote(event_id)}/reward", json_body=reward, safe=True)
        return _receipt(event_id, resp)

    def activate(self, event_id: str) -> dict[str, Any]:
        """Activate a deferred event; idempotent. Returns the receipt ``{"eventId", "status"}``."""
        resp = self._call("POST", f"/multislot/events/{_quote(event_id)}/activate", safe=True)
        return _receipt(event_id, resp)

    def rank_single(self, request: dict[str, Any]) -> dict[str, Any]:
        """Single-slot rank (v1.0 contract): ``RankRequest`` dict -> ``RankResponse`` dict."""
        body = self._with_event_id(request)
        return _json_of(self._call("POST", "/rank", json_body=body, safe=True))

    def reward_single(self, event_id: str, reward: dict[str, Any]) -> dict[str, Any]:
        """Single-slot reward ``{"value"}``; returns the receipt."""
        resp = self._call("POST", f"/events/{_quote(event_id)}/reward", json_body=reward, safe=True)
        return _receipt(event_id, resp)

    # ------------------------------------------------------------ configuration
    def get_service_configuration(self) -> dict[str, Any]:
        """The service configuration."""
        return _json_of(self._call("GET", "/configurations/service", safe=True))

    def update_service_configuration(self, configuration: dict[str, Any]) -> dict[str, Any]:
        """Update the configuration; returns the new one."""
        return _json_of(self._call("PUT", "/configurations/service", json_body=configuration, safe=True))

    def get_policy(self) -> dict[str, Any]:
        """The learning policy ``{"name", "arguments"}``."""
        return _json_of(self._call("GET", "/configurations/policy", safe=True))

    def update_policy(self, policy: dict[str, Any]) -> dict[str, Any]:
        """Set the learning policy (the model restarts); returns it. Not repeated after an ambiguous failure."""
        return _json_of(self._call("PUT", "/configurations/policy", json_body=policy, safe=False))

    def reset_policy(self) -> dict[str, Any]:
        """Back to the default policy; returns it."""
        return _json_of(self._call("DELETE", "/configurations/policy", safe=False))

    def policy_history(self) -> list[dict[str, Any]]:
        """Extension: every recorded policy change, newest first (as ``LocalPersonalizer.policy_history``)."""
        return _json_of(self._call("GET", "/configurations/policy/history", safe=True))["value"]

    def rollback_policy(self, change_id: str) -> dict[str, Any]:
        """Extension: restore the policy a recorded change replaced; returns the new change. Not repeated."""
        path = f"/configurations/policy/history/{quote(str(change_id), safe='')}/rollback"
        return _json_of(self._call("POST", path, safe=False))

    # ------------------------------------------------------------ model and log
    def export_model(self) -> bytes:
        """The current Vowpal Wabbit model file."""
        return self._call("GET", "/model", safe=True).content

    def import_model(self, model: bytes) -> None:
        """Replace the model with a VW multi-slot model file (raw bytes)."""
        self._call("PUT", "/model", data=bytes(model), content_type="application/octet-stream", safe=True)

    def reset_model(self) -> None:
        """Start a fresh model with the current policy."""
        self._call("DELETE", "/model", safe=False)

    def model_properties(self) -> dict[str, Any]:
        """``{"creationTime", "lastModifiedTime"}`` of the model."""
        return _json_of(self._call("GET", "/model/properties", safe=True))

    def log_properties(self) -> dict[str, Any]:
        """``{"dateRange": {"from", "to"}}`` of the event log."""
        return _json_of(self._call("GET", "/logs/properties", safe=True))

    def delete_logs(self) -> int:
        """Delete closed events from the log; returns how many (when the server tells)."""
        resp = self._call("DELETE", "/logs", safe=True)
        try:
            return int(resp.headers.get(DELETED_HEADER, "0"))
        except ValueError:
            return 0

    def log_events(self, start: str | None = None, end: str | None = None, after: str | None = None,
                   top: int | None = None) -> dict[str, Any]:
        """One page of the event log, ``{"value", "nextLink", "cursor"}`` (this project's server extension):
        events created in [start, end) after the cursor ``after``, ``top`` per page (default 500, max 5000)."""
        params = {k: v for k, v in (("start", start), ("end", end), ("after", after), ("top", top)) if v is not None}
        return _json_of(self._call("GET", "/logs/events", safe=True, query="&" + urlencode(params) if params else ""))

    def iter_log_events(self, start: str | None = None, end: str | None = None, after: str | None = None,
                        top: int | None = None) -> Iterator[dict[str, Any]]:
        """Every event of :meth:`log_events`, page after page (one request per ``top`` events)."""
        return iterate_pages(self.log_events, start, end, after, top)

    def stats(self) -> dict[str, Any]:
        """Event counts and settings (this project's server extension)."""
        return _json_of(self._call("GET", "/stats", safe=True))

    # ------------------------------------------------------------ insight (feature importances, explanations)
    def explain_event(self, event_id: str) -> dict[str, Any]:
        """Why each slot of a logged event got its action, by the current model (server extension)."""
        return _json_of(self._call("GET", f"/multislot/events/{_quote(event_id)}/explanation", safe=True))

    def create_feature_importance(self, feature_importance_id: str, contract: dict[str, Any]) -> dict[str, Any]:
        """Start a feature-importance job ``{"name", "startTime", "endTime"}``; returns it (status Running)."""
        return _json_of(self._call("PUT", f"/featureImportances/{_quote(feature_importance_id)}",
                                   json_body=contract, safe=False))

    def get_feature_importance(self, feature_importance_id: str) -> dict[str, Any]:
        """A feature-importance job: status, progress and ``featureScores`` (most important first)."""
        return _json_of(self._call("GET", f"/featureImportances/{_quote(feature_importance_id)}", safe=True))

    def list_feature_importances(self) -> list[dict[str, Any]]:
        """Every feature-importance job (without scores), following ``nextLink`` pages."""
        return self._all_pages("/featureImportances")

    def _all_pages(self, path: str, *, page_size: int | None = None) -> list[dict[str, Any]]:
        """Every item of a ``{"value", "nextLink"}`` listing, page by page (``skip``, ``maxpagesize``)."""
        items: list[dict[str, Any]] = []
        size = f"&maxpagesize={int(page_size)}" if page_size is not None else ""
        while True:
            page = _json_of(self._call("GET", path, safe=True, query=f"&skip={len(items)}{size}"))
            items.extend(page.get("value", []))
            if not page.get("nextLink") or not page.get("value"):
                return items

    def delete_feature_importance(self, feature_importance_id: str) -> None:
        """Delete a feature-importance job (a running one is cancelled)."""
        self._call("DELETE", f"/featureImportances/{_quote(feature_importance_id)}", safe=True)

    # ------------------------------------------------------------ offline evaluations
    def create_evaluation(self, contract: dict[str, Any]) -> dict[str, Any]:
        """Start an offline evaluation of the logged events; returns it as the v1.1 ``Evaluation`` (status
        ``pending``, the id the server chose).

        ``contract``: ``{"name", "startTime", "endTime", "policies": [{"name", "arguments"}],
        "enableOfflineExperimentation"}`` (times ISO-8601). Not repeated after an ambiguous failure:
        a repeat would start a second evaluation.
        """
        return _json_of(self._call("POST", f"/{EVALUATIONS_VERSION}/evaluations", json_body=contract, safe=False,
                                   api_version=False))

    def get_evaluation(self, evaluation_id: str) -> dict[str, Any]:
        """An offline evaluation as the v1.1 ``Evaluation``: ``status`` (pending, completed, failed,
        optimalPolicyApplied...), ``progress`` and, once completed, ``policyResults`` and ``optimalPolicy``."""
        return _json_of(self._call("GET", f"/{EVALUATIONS_VERSION}/evaluations/{_quote(evaluation_id)}", safe=True,
                                   api_version=False))

    def list_evaluations(self, *, page_size: int | None = None) -> list[dict[str, Any]]:
        """Every offline evaluation, oldest first, as ``EvaluationDetails`` (id, name, startTime, endTime,
        creationTime, status in the 2022 API's words: Running, Succeeded, Failed..., evaluationType):
        without results, so a listing stays small; following ``nextLink`` pages of ``page_size``."""
        return self._all_pages("/evaluations", page_size=page_size)

    def delete_evaluation(self, evaluation_id: str) -> None:
        """Delete an offline evaluation (a running one is cancelled)."""
        self._call("DELETE", f"/{EVALUATIONS_VERSION}/evaluations/{_quote(evaluation_id)}", safe=True,
                   api_version=False)

    def apply_from_evaluation(self, evaluation_id: str, policy_name: str | None = None) -> None:
        """Make a policy of a completed evaluation the learning policy (default: its ``optimalPolicy``).

        The server sets the policy's learning settings and exploration, and starts from the model
        the evaluation's replay trained while it still holds it (an embedded server; the trainer
        that ran it in a scaled-out deployment), else from a fresh model. Not repeated after an
        ambiguous failure.
        """
        body: dict[str, Any] = {"evaluationId": evaluation_id}
        if policy_name is not None:
            body["policyName"] = policy_name
        self._call("POST", "/configurations/applyFromEvaluation", json_body=body, safe=False)

    def health(self) -> dict[str, Any]:
        """The server's health answer (``{"status": "ok", ...}``); needs no key."""
        return _json_of(self._call("GET", "/health", safe=True, api_version=False))

    # ------------------------------------------------------------ lifecycle
    def close(self) -> None:
        """Close the HTTP session if this client created it."""
        if self._own_session:
            self.session.close()
            self._unsafe_session.close()

    def __enter__(self) -> PersonalizerClient:
        return self

    def __exit__(self, *_: Any) -> None:
        self.close()

    # ------------------------------------------------------------ transport
    @staticmethod
    def _with_event_id(request: Any) -> Any:
        """The request with an eventId, so a retried rank is answered, not ranked twice."""
        if isinstance(request, dict) and request.get("eventId") is None:
            return {**request, "eventId": new_event_id()}
        return request

    def _call(self, method: str, path: str, *, json_body: Any = _NO_BODY, data: bytes | None = None,
              content_type: str | None = None, safe: bool, api_version: bool = True,
              query: str = "") -> requests.Response:
        """One call with bounded retries; raises PersonalizerError for every failure."""
        headers = {"Accept": "application/json"}
        if self._key:
            headers[KEY_HEADER] = self._key
        if json_body is not _NO_BODY:
            data = json.dumps(json_body).encode()
            content_type = "application/json"
        if content_type:
            headers["Content-Type"] = content_type
        url = self._base + path + (_API_QUERY if api_version else "") + query
        session = self.session if safe else self._unsafe_session
        try:
            resp = session.request(method, url, data=data, headers=headers, timeout=self.timeout)
        except requests.RequestException as exc:
            raise self._transport_error(exc) from None
        if resp.status_code < 400:
            return resp
        raise self._http_error(resp)

    def _http_error(self, resp: requests.Response) -> PersonalizerError:
        status = resp.status_code
        code, message = None, None
        try:
            body = resp.json()
            err = body.get("error") if isinstance(body, dict) else None
            if isinstance(err, dict):
                code, message = err.get("code"), err.get("message")
        except ValueError:
            pass
        if not isinstance(code, str) or not code:
            code = code_of_status(status)
        if not isinstance(message, str) or not message:
            text = (resp.text or "").strip().replace("\n", " ")[:200]
            message = f"HTTP {status} {resp.reason or ''}".strip() + (f": {text}" if text else "")
        return PersonalizerError(code, self._scrub(message), status)

    def _transport_error(self, exc: requests.RequestException) -> PersonalizerError:
        if _timed_out(exc):
            return PersonalizerError("RequestTimeout", f"no answer from {self.endpoint} within {self.timeout} s", 408)
        detail = self._scrub(str(exc).splitlines()[0][:200]) if str(exc) else type(exc).__name__
        return PersonalizerError("ServiceUnreachable", f"cannot reach {self.endpoint}: {detail}", 503)

    def _scrub(self, text: str) -> str:
        """Messages never carry the key, even if a server or proxy echoed it."""
        return text.replace(self._key, "***") if self._key else text


def _retry(retries: int, backoff: float, *, safe: bool) -> Retry:
    """urllib3's retry policy: refused connects and 429/503 always; lost answers only for safe calls."""
    return Retry(
        total=retries, connect=retries, status=retries, read=retries if safe else 0, other=0, redirect=0,
        allowed_methods=None,  # every method: safety is decided per call by the session used
        status_forcelist=_RETRY_STATUSES, backoff_factor=backoff, raise_on_status=False,
        respect_retry_after_header=True, retry_after_max=_MAX_RETRY_AFTER,
    )


def _session_for(url: str, retry: Retry) -> requests.Session:
    """A session retrying by ``retry``, with the environment's proxy, CA bundle and netrc resolved once.

    requests re-reads them on every call when ``trust_env`` is on (about 0.3 ms a call
    here, as much as the server's own work), so they are pinned at construction.
    """
    session = requests.Session()
    adapter = HTTPAdapter(max_retries=retry)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    env = session.merge_environment_settings(url, {}, None, None, None)
    session.proxies.update(env.get("proxies") or {})
    if env.get("verify") not in (None, True):
        session.verify = env["verify"]
    auth = requests.utils.get_netrc_auth(url)
    if auth:
        session.auth = auth
    session.trust_env = False
    return session


def _json_of(resp: requests.Response) -> Any:
    """The JSON answer, or a PersonalizerError if the endpoint answered something else."""
    try:
        return resp.json()
    except ValueError:
        raise PersonalizerError("InvalidResponse", f"the endpoint answered HTTP {resp.status_code} without JSON "
                                f"({resp.headers.get('content-type', 'no content type')})", 502) from None


def _quote(event_id: str) -> str:
    return quote(str(event_id), safe="")


def _receipt(event_id: str, resp: requests.Response) -> dict[str, Any]:
    return {"eventId": event_id, "status": resp.headers.get(STATUS_HEADER, "accepted")}


def _timed_out(exc: requests.RequestException) -> bool:
    """True when the server took the request and did not answer in time (after any retries)."""
    if isinstance(exc, requests.ConnectTimeout):
        return False  # never connected: unreachable, not slow
    if isinstance(exc, requests.Timeout):
        return True
    reason = exc.args[0].reason if exc.args and isinstance(exc.args[0], MaxRetryError) else None
    return isinstance(reason, ReadTimeoutError)
