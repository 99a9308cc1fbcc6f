"""PersonalizerClient: endpoint forms, error mapping, bounded retries, and the key kept out of sight."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
import requests
from requests.adapters import BaseAdapter
from server_fixtures import KEY, ThreadedServer, free_port, live_server_fixture, rank_request, server_engine_fixture  # noqa: F401

from personalizer import client as client_module
from personalizer.client import PersonalizerClient, normalize_endpoint
from personalizer.contract import PersonalizerError


@pytest.mark.parametrize("given", [
    "http://127.0.0.1:8000", "http://127.0.0.1:8000/", "http://127.0.0.1:8000/personalizer",
    "http://127.0.0.1:8000/personalizer/", " http://127.0.0.1:8000/personalizer/v1.1-preview.1/ ",
    "http://127.0.0.1:8000/Personalizer/v1.0",
])
def test_endpoint_with_or_without_slash_or_suffix(given: str) -> None:
    assert normalize_endpoint(given) == "http://127.0.0.1:8000"


def test_endpoint_keeps_a_path_prefix_of_a_reverse_proxy() -> None:
    assert normalize_endpoint("https://example.test/apps/p13n/personalizer/") == "https://example.test/apps/p13n"


@pytest.mark.parametrize("bad", ["", "127.0.0.1:8000", "ftp://host", "http://"])
def test_endpoint_must_be_http(bad: str) -> None:
    with pytest.raises(ValueError):
        normalize_endpoint(bad)


def test_repr_and_errors_never_show_the_key() -> None:
    client = PersonalizerClient(f"http://127.0.0.1:{free_port()}", KEY, retries=0)
    assert KEY not in repr(client) and "***" in repr(client)
    with pytest.raises(PersonalizerError) as info:
        client.rank(rank_request())
    assert info.value.code == "ServiceUnreachable" and info.value.status == 503
    assert KEY not in str(info.value) and KEY not in repr(info.value)


def test_the_whole_interface_against_the_server(live_server: ThreadedServer) -> None:
    with PersonalizerClient(live_server.base + "/", KEY) as client:
        assert client.health()["status"] == "ok"
        answer = client.rank(rank_request(defer=True))
        event = answer["eventId"]
        assert len(event) == 38 and event[32] == "-"  # generated here, Personalizer-shaped
        assert client.activate(event) == {"eventId": event, "status": "pending"}
        assert client.reward(event, {"reward": [{"slotId": "BigHeroPosition", "value": 1}]})["status"] == "pending"
        receipt = client.reward(event, {"reward": [{"slotId": "SmallSidebar", "value": 0}]})
        assert receipt == {"eventId": event, "status": "learned"}
        single = client.rank_single({"contextFeatures": [{"a": 1}], "actions": rank_request()["actions"]})
        assert client.reward_single(single["eventId"], {"value": 1})["status"] == "learned"
        stats = client.stats()
        assert stats["learned"] == 2 and "home" not in stats
        cfg = client.get_service_configuration()
        assert client.update_service_configuration({**cfg, "defaultReward": 0.1})["defaultReward"] == 0.1
        assert client.update_policy({"name": "p", "arguments": "--ccb_explore_adf"})["name"] == "p"
        assert client.get_policy()["name"] == "p"
        assert client.reset_policy()["name"] != "p"
        model = client.export_model()
        assert client.import_model(model) is None and client.reset_model() is None
        assert set(client.model_properties()) == {"creationTime", "lastModifiedTime"}
        assert client.log_properties()["dateRange"] is not None
        assert client.delete_logs() == 2


def test_wrong_key_is_a_personalizer_error(live_server: ThreadedServer) -> None:
    with pytest.raises(PersonalizerError) as info:
        PersonalizerClient(live_server.base, "wrong").rank(rank_request())
    assert (info.value.code, info.value.status) == ("Unauthorized", 401)
    assert PersonalizerClient(live_server.base).health()["status"] == "ok"  # health needs no key


# ---------------------------------------------------------------- retries, with a scripted transport

class Scripted(BaseAdapter):
    """A requests transport that answers from a script: (status, body, headers) or an exception."""

    def __init__(self, script: list[Any]) -> None:
        super().__init__()
        self.script = list(script)
        self.requests: list[requests.PreparedRequest] = []

    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:
        self.requests.append(request)
        step = self.script.pop(0) if len(self.script) > 1 else self.script[0]
        if isinstance(step, Exception):
            raise step
        status, body, headers = step
        resp = requests.Response()
        resp.status_code = status
        resp._content = body if isinstance(body, bytes) else json.dumps(body).encode()
        resp.headers.update(headers)
        resp.url = request.url or ""
        resp.request = request
        resp.reason = "scripted"
        return resp

    def close(self) -> None:
        pass


def scripted_client(script: list[Any], sleeps: list[float], monkeypatch: pytest.MonkeyPatch,
                    **options: Any) -> tuple[PersonalizerClient, Scripted]:
    adapter = Scripted(script)
    session = requests.Session()
    session.mount("http://", adapter)
    monkeypatch.setattr(client_module.time, "sleep", sleeps.append)
    return PersonalizerClient("http://svc.test", KEY, session=session, **options), adapter


OK_RANK = (201, {"eventId": "x", "slots": [{"id": "s", "rewardActionId": "a"}]}, {})
BUSY = (503, {"error": {"code": "ServiceUnavailable", "message": "busy"}}, {})
REFUSED = requests.ConnectionError("NewConnectionError: Connection refused")
LOST = requests.ConnectionError("RemoteDisconnected: Remote end closed connection without response")


def test_rank_retries_503_with_backoff_and_the_same_event_id(monkeypatch: pytest.MonkeyPatch) -> None:
    sleeps: list[float] = []
    client, adapter = scripted_client([BUSY, BUSY, OK_RANK], sleeps, monkeypatch, backoff=0.1)
    assert client.rank(rank_request())["eventId"] == "x"
    assert sleeps == [0.1, 0.2]
    bodies = [json.loads(r.body) for r in adapter.requests]
    assert len(bodies) == 3 and len({b["eventId"] for b in bodies}) == 1  # a retry repeats the same event


def test_retry_after_is_honoured(monkeypatch: pytest.MonkeyPatch) -> None:
    sleeps: list[float] = []
    throttled = (429, {"error": {"code": "TooManyRequests", "message": "slow down"}}, {"Retry-After": "1.5"})
    client, _ = scripted_client([throttled, OK_RANK], sleeps, monkeypatch)
    client.rank(rank_request("e"))
    assert sleeps == [1.5]


def test_retries_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    sleeps: list[float] = []
    client, adapter = scripted_client([BUSY], sleeps, monkeypatch, retries=2)
    with pytest.raises(PersonalizerError) as info:
        client.get_policy()
    assert (info.value.code, info.value.status) == ("ServiceUnavailable", 503)
    assert len(adapter.requests) == 3 and len(sleeps) == 2


def test_ambiguous_failures_are_retried_only_when_safe(monkeypatch: pytest.MonkeyPatch) -> None:
    sleeps: list[float] = []
    client, adapter = scripted_client([LOST, (204, b"", {"x-personalizer-status": "learned"})], sleeps, monkeypatch)
    assert client.reward("e", {"reward": [{"slotId": "s", "value": 1}]})["status"] == "learned"
    assert len(adapter.requests) == 2

    client, adapter = scripted_client([LOST, (200, {"name": "p", "arguments": "a"}, {})], sleeps, monkeypatch)
    with pytest.raises(PersonalizerError) as info:
        client.update_policy({"name": "p", "arguments": "--ccb_explore_adf"})  # resets the model: not repeated
    assert info.value.code == "ServiceUnreachable" and len(adapter.requests) == 1

    client, adapter = scripted_client([REFUSED, (200, {"name": "p", "arguments": "a"}, {})], sleeps, monkeypatch)
    assert client.update_policy({"name": "p", "arguments": "--ccb_explore_adf"})["name"] == "p"  # never sent


def test_read_timeout_is_a_request_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    sleeps: list[float] = []
    client, adapter = scripted_client([requests.ReadTimeout("read timed out")], sleeps, monkeypatch, retries=1)
    with pytest.raises(PersonalizerError) as info:
        client.model_properties()
    assert (info.value.code, info.value.status) == ("RequestTimeout", 408)
    assert len(adapter.requests) == 2


@pytest.mark.parametrize(("status", "body", "code"), [
    (502, b"<html>Bad Gateway</html>", "BadGateway"),
    (404, b"", "ResourceNotFound"),
    (418, b"{}", "Http418"),
    (400, {"error": {"code": "InvalidRankRequest", "message": "actions: bad"}}, "InvalidRankRequest"),
    (400, {"error": "flat"}, "BadRequest"),
])
def test_error_bodies_map_to_personalizer_errors(monkeypatch: pytest.MonkeyPatch, status: int, body: Any,
                                                  code: str) -> None:
    client, _ = scripted_client([(status, body, {})], [], monkeypatch, retries=0)
    with pytest.raises(PersonalizerError) as info:
        client.rank(rank_request("e"))
    assert (info.value.code, info.value.status) == (code, status)
    assert info.value.message


def test_an_echoed_key_is_scrubbed(monkeypatch: pytest.MonkeyPatch) -> None:
    echo = (400, {"error": {"code": "BadRequest", "message": f"bad header {KEY}"}}, {})
    client, _ = scripted_client([echo], [], monkeypatch, retries=0)
    with pytest.raises(PersonalizerError) as info:
        client.rank(rank_request("e"))
    assert KEY not in str(info.value)


def test_rank_keeps_a_given_event_id(monkeypatch: pytest.MonkeyPatch) -> None:
    client, adapter = scripted_client([OK_RANK], [], monkeypatch)
    client.rank(rank_request("mine"))
    sent: Callable[[], Any] = lambda: json.loads(adapter.requests[-1].body)  # noqa: E731
    assert sent()["eventId"] == "mine"
    assert adapter.requests[-1].headers["Ocp-Apim-Subscription-Key"] == KEY
    assert "api-version=2022-09-01-preview" in (adapter.requests[-1].url or "")


def test_environment_proxy_settings_are_honoured_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTP_PROXY", "http://proxy.test:3128")
    monkeypatch.setenv("NO_PROXY", "")
    monkeypatch.delenv("http_proxy", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    client = PersonalizerClient("http://svc.test:8000")
    assert client.session.proxies.get("http") == "http://proxy.test:3128"
    assert client.session.trust_env is False  # resolved at construction, not re-read per call
    monkeypatch.setenv("NO_PROXY", "svc.test")
    assert "http" not in PersonalizerClient("http://svc.test:8000").session.proxies


def test_a_success_without_json_is_an_invalid_response(monkeypatch: pytest.MonkeyPatch) -> None:
    client, _ = scripted_client([(201, b"<html>captive portal</html>", {"content-type": "text/html"})], [],
                                monkeypatch, retries=0)
    with pytest.raises(PersonalizerError) as info:
        client.rank(rank_request("e"))
    assert (info.value.code, info.value.status) == ("InvalidResponse", 502)
