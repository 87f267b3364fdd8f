"""Property-based requests from the app's own OpenAPI document (schemathesis): never a 5xx, documented replies.

schemathesis reads ``/openapi.json`` and sends schema-shaped and schema-violating requests (wrong types,
missing fields, odd media types, random bytes) to every documented operation, then checks each reply with
its built-in checks: not a server error, a documented status code, content type and headers, a body that
matches the documented schema, and schema-violating input rejected with a 4xx.

* In process, against the WSGI app with the fake engine (fast). Audio URLs never leave the process: the
  fetch module's resolver is replaced by one that answers every name with a documentation address
  (192.0.2.1, not public) and every IP literal with itself, and the allow-list is empty, so each URL is
  refused before a connection exists (403); a connection attempt would be a 500 and fail the run.
* Over HTTP against the session's real gunicorn server (``live_server``), with a small budget: raw-byte
  bodies reach the real decoder. JSON bodies naming a URL are not sent there (the server process resolves
  names itself, and these tests only talk to 127.0.0.1); local paths are.

``positive_data_acceptance`` is left out on purpose: a schema-valid body is any bytes or any string, and most
of them are rightly refused (415 not audio, 403/404 for a path or URL), so "valid data is accepted" does
not hold for this API.
"""

from __future__ import annotations

import ipaddress
import socket
import tempfile
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import positive_data_acceptance
from schemathesis.generation import GenerationMode

import app.audio.fetch as fetch_module
from app import create_app
from app.settings import Settings
from tests.fakes import FakeEngine

# Raw audio bodies are bytes, like application/octet-stream.
schemathesis.serializer.alias("audio/*", "application/octet-stream")

SETTINGS = settings(
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large],
)
EXCLUDED_CHECKS = [positive_data_acceptance]

_tmp = Path(tempfile.mkdtemp(prefix="asr-openapi-fuzz-"))
(_tmp / "notes.txt").write_text("not audio\n")
wsgi_app = create_app(
    Settings(cache_dir=_tmp, local_audio_dir=_tmp, max_upload_bytes=1_000_000, url_allowed_networks=()), FakeEngine()
)
schema = schemathesis.openapi.from_wsgi("/openapi.json", wsgi_app)


# --------------------------------------------------------------------------- in process


_DOCUMENTATION_ADDRESS = "192.0.2.1"  # TEST-NET-1: not public, so the address policy refuses it


def _offline_getaddrinfo(host, port, family=0, type=0, proto=0, flags=0):
    try:
        address = str(ipaddress.ip_address(str(host).split("%", 1)[0]))
    except ValueError:
        address = _DOCUMENTATION_ADDRESS
    if ipaddress.ip_address(address).is_global:
        address = _DOCUMENTATION_ADDRESS  # a public literal would be connected to: never here
    af = socket.AF_INET6 if ":" in address else socket.AF_INET
    return [(af, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (address, port or 80))]


class _OfflineSocket:
    """The :mod:`socket` module as the fetch module sees it, with a resolver that never asks the network."""

    getaddrinfo = staticmethod(_offline_getaddrinfo)

    def __getattr__(self, name):
        return getattr(socket, name)


def _no_connections(*args, **kwargs):
    raise AssertionError(f"the fuzzed app tried to open a connection: {args}")


@pytest.fixture(scope="module", autouse=True)
def offline_fetch():
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(fetch_module, "socket", _OfflineSocket())
        mp.setattr(fetch_module, "create_connection", _no_connections)
        yield


@schema.parametrize()
@settings(SETTINGS, max_examples=75)
def test_in_process_no_server_errors_and_documented_replies(case):
    response = case.call_and_validate(excluded_checks=EXCLUDED_CHECKS)
    assert response.status_code < 500, response.text


def test_offline_resolver_refuses_every_url():
    """The resolver swap above really keeps URLs in the process: every one ends as a 403, none connects."""
    client = wsgi_app.test_client()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(fetch_module, "socket", _OfflineSocket())
        mp.setattr(fetch_module, "create_connection", _no_connections)
        for url in ("https://example.com/audio.mp3", "http://8.8.8.8/a.wav", "http://[2001:4860::8888]/", "http://x/"):
            r = client.post("/asr", json={"url": url})
            assert r.status_code == 403, (url, r.get_data(as_text=True))
            assert r.get_json()["error"]["code"] == "url_forbidden"


# --------------------------------------------------------------------------- the real server


def _names_a_url(case) -> bool:
    body = case.body
    return isinstance(body, dict) and "://" in str(body.get("url", ""))


@pytest.mark.e2e
@pytest.mark.slow
def test_live_server_no_server_errors_and_documented_replies(live_server):
    # Loaded from the running server, so the document under test is the one it serves. (schemathesis'
    # from_fixture loader cannot be used here: 4.32.5 reads Node._nodeid, which pytest 9 no longer has.)
    live_schema = schemathesis.openapi.from_url(live_server.url + "/openapi.json")
    operations = [result.ok() for result in live_schema.get_all_operations()]
    assert {op.label for op in operations} >= {"GET /hc", "POST /asr", "GET /metrics"}
    for operation in operations:
        cases = operation.as_strategy(GenerationMode.POSITIVE) | operation.as_strategy(GenerationMode.NEGATIVE)

        @given(case=cases)
        @settings(SETTINGS, max_examples=25)
        def check(case):
            if _names_a_url(case):
                return  # the server would resolve the name itself; see the module docstring
            response = case.call_and_validate(base_url=live_server.url, excluded_checks=EXCLUDED_CHECKS, timeout=60)
            assert response.status_code < 500, response.text

        check()
