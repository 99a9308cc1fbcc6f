"""PersonalizerClient: endpoint forms, error mapping, bounded retries, and the key kept out of sight."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from server_fixtures import KEY, ThreadedServer, free_port, rank_request

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


# ---------------------------------------------------------------- retries, against a scripted real server

DROP = "drop"   # read the request, then close the connection without an answer (an ambiguous failure)
STALL = "stall"  # read the request, answer nothing until the client has timed out


class ScriptedServer:
    """A real HTTP server on loopback that answers from a script: (status, body, headers), DROP or STALL.

    The last step repeats. Every request's method, path, headers and body are recorded.
    """

    def __init__(self, script: list[Any]) -> None:
        self.script = list(script)
        self.requests: list[dict[str, Any]] = []
        self.released = threading.Event()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *_: Any) -> None:
                pass

            def _any(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                outer.requests.append({"method": self.command, "path": self.path,
                                       "headers": dict(self.headers), "body": body})
                step = outer.script.pop(0) if len(outer.script) > 1 else outer.script[0]
                if step == DROP:
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                if step == STALL:
                    outer.released.wait(5)
                    self.close_connection = True
                    return
                status, payload, headers = step
                data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
                self.send_response(status)
                for name, value in {"Content-Type": "application/json", **headers}.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_DELETE = _any

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.released.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def scripted() -> Iterator[Callable[[list[Any]], ScriptedServer]]:
    servers: list[ScriptedServer] = []

    def start(script: list[Any]) -> ScriptedServer:
        servers.append(ScriptedServer(script))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def scripted_client(server: ScriptedServer, **options: Any) -> PersonalizerClient:
    return PersonalizerClient(server.base, KEY, **{"backoff": 0.01, **options})


OK_RANK = (201, {"eventId": "x", "slots": [{"id": "s", "rewardActionId": "a"}]}, {})
BUSY = (503, {"error": {"code": "ServiceUnavailable", "message": "busy"}}, {})
OK_POLICY = (200, {"name": "p", "arguments": "a"}, {})


def test_rank_retries_503_with_the_same_event_id(scripted: Callable[[list[Any]], ScriptedServer]) -> None:
    server = scripted([BUSY, BUSY, OK_RANK])
    assert scripted_client(server).rank(rank_request())["eventId"] == "x"
    bodies = [json.loads(r["body"]) for r in server.requests]
    assert len(bodies) == 3 and len({b["eventId"] for b in bodies}) == 1  # a retry repeats the same event


def test_retry_after_is_honoured(scripted: Callable[[list[Any]], ScriptedServer]) -> None:
    server = scripted([(429, {"error": {"code": "TooManyRequests", "message": "slow down"}}, {"Retry-After": "1"}),
                       OK_RANK])
    started = time.monotonic()
    scripted_client(server).rank(rank_request("e"))
    assert time.monotonic() - started >= 1.0  # waited as told (backoff alone would be 0.01 s)
    assert len(server.requests) == 2


def test_retries_are_bounded(scripted: Callable[[list[Any]], ScriptedServer]) -> None:
    server = scripted([BUSY])
    with pytest.raises(PersonalizerError) as info:
        scripted_client(server, retries=2).get_policy()
    assert (info.value.code, info.value.status) == ("ServiceUnavailable", 503)
    assert len(server.requests) == 3


def test_ambiguous_failures_are_retried_only_when_safe(scripted: Callable[[list[Any]], ScriptedServer]) -> None:
    server = scripted([DROP, (204, b"", {"x-personalizer-status": "learned"})])
    assert scripted_client(server).reward("e", {"reward": [{"slotId": "s", "value": 1}]})["status"] == "learned"
    assert len(server.requests) == 2

    server = scripted([DROP, OK_POLICY])
    with pytest.raises(PersonalizerError) as info:
        scripted_client(server).update_policy({"name": "p", "arguments": "--ccb_explore_adf"})  # not repeated
    assert info.value.code == "ServiceUnreachable" and len(server.requests) == 1


def test_a_refused_connection_is_retried_for_any_call_and_then_reported() -> None:
    port = free_port()  # nothing listens there: every connect is refused, so nothing was ever sent
    client = PersonalizerClient(f"http://127.0.0.1:{port}", KEY, retries=2, backoff=0.01)
    with pytest.raises(PersonalizerError) as info:
        client.update_policy({"name": "p", "arguments": "--ccb_explore_adf"})
    assert (info.value.code, info.value.status) == ("ServiceUnreachable", 503)
    assert "Max retries exceeded" in info.value.message  # urllib3 retried before giving up


def test_read_timeout_is_a_request_timeout(scripted: Callable[[list[Any]], ScriptedServer]) -> None:
    server = scripted([STALL])
    with pytest.raises(PersonalizerError) as info:
        scripted_client(server, retries=1, timeout=0.3).model_properties()
    assert (info.value.code, info.value.status) == ("RequestTimeout", 408)
    assert len(server.requests) == 2
    server = scripted([STALL])
    with pytest.raises(PersonalizerError) as info:
        scripted_client(server, retries=1, timeout=0.3).reset_model()  # unsafe: one attempt only
    assert (info.value.code, info.value.status) == ("RequestTimeout", 408)
    assert len(server.requests) == 1


@pytest.mark.parametrize(("status", "body", "code"), [
    (502, b"<html>Bad Gateway</html>", "BadGateway"),
    (404, b"", "ResourceNotFound"),
    (418, b"{}", "Http418"),
    (400, {"error": {"code": "InvalidRankRequest", "message": "actions: bad"}}, "InvalidRankRequest"),
    (400, {"error": "flat"}, "BadRequest"),
])
def test_error_bodies_map_to_personalizer_errors(scripted: Callable[[list[Any]], ScriptedServer], status: int,
                                                  body: Any, code: str) -> None:
    client = scripted_client(scripted([(status, body, {})]), retries=0)
    with pytest.raises(PersonalizerError) as info:
        client.rank(rank_request("e"))
    assert (info.value.code, info.value.status) == (code, status)
    assert info.value.message


def test_an_echoed_key_is_scrubbed(scripted: Callable[[list[Any]], ScriptedServer]) -> None:
    echo = (400, {"error": {"code": "BadRequest", "message": f"bad header {KEY}"}}, {})
    client = scripted_client(scripted([echo]), retries=0)
    with pytest.raises(PersonalizerError) as info:
        client.rank(rank_request("e"))
    assert KEY not in str(info.value)


def test_rank_keeps_a_given_event_id(scripted: Callable[[list[Any]], ScriptedServer]) -> None:
    server = scripted([OK_RANK])
    scripted_client(server).rank(rank_request("mine"))
    sent = server.requests[-1]
    assert json.loads(sent["body"])["eventId"] == "mine"
    assert sent["headers"]["Ocp-Apim-Subscription-Key"] == KEY
    assert "api-version=2022-09-01-preview" in sent["path"]


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


def test_a_success_without_json_is_an_invalid_response(scripted: Callable[[list[Any]], ScriptedServer]) -> None:
    client = scripted_client(scripted([(201, b"<html>captive portal</html>", {"Content-Type": "text/html"})]),
                             retries=0)
    with pytest.raises(PersonalizerError) as info:
        client.rank(rank_request("e"))
    assert (info.value.code, info.value.status) == ("InvalidResponse", 502)
