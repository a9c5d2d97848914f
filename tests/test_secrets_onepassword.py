"""op:// references (1Password service accounts) through a real project and user config.

No 1Password service can run offline, so `ServiceDouble` stands in for it: it replaces the plugin's one seam,
`authenticate` (the SDK's `Client.authenticate`), and answers `secrets.resolve` from a dict. Everything else is
real: the official SDK's own parser checks the references, and signing in with a malformed token goes through the
real SDK (which refuses it before any network is needed).
"""
from __future__ import annotations

import asyncio
import sys

import pytest

from mxcp_core import Runtime
from mxcp_plugins import secrets_onepassword

TOKEN = "ops_test-token-never-shown"


class ServiceDouble:
    """A stand-in for 1Password: items by reference; counts sign-ins and reads."""

    def __init__(self, values: dict[str, str]) -> None:
        self.values = dict(values)
        self.errors: dict[str, str] = {}
        self.sign_ins: list[str] = []
        self.reads: list[str] = []
        self.delay = 0.0
        self.delays: list[float] = []  # for the next reads, one each; then `delay`

    async def authenticate(self, token: str) -> ServiceDouble:
        self.sign_ins.append(token)
        return self

    @property
    def secrets(self) -> ServiceDouble:
        return self

    async def resolve(self, reference: str) -> str:
        self.reads.append(reference)
        value, error = self.values.get(reference), self.errors.get(reference)  # what the service holds now
        delay = self.delays.pop(0) if self.delays else self.delay
        if delay:
            await asyncio.sleep(delay)
        if error is not None:
            raise Exception(error)  # the SDK raises plain Exception with 1Password's message
        if value is None:
            raise Exception("error resolving secret reference: no item matched the secret reference query")
        return value


@pytest.fixture
def service(monkeypatch):
    double = ServiceDouble({"op://Prod/Warehouse/password": "wh-pass-1", "op://Prod/Warehouse/user": "loader",
                            "op://Prod/API/credential": "api-key-1"})
    monkeypatch.setattr(secrets_onepassword, "authenticate", double.authenticate)
    return double


def op_config(parameters: str, *, section: str = "onepassword: {enabled: true}\n") -> str:
    return ("mxcp: 1\n" + section + "projects:\n  demo:\n    profiles:\n      default:\n        secrets:\n"
            f"          - {{name: warehouse, type: custom, parameters: {parameters}}}\n")


@pytest.fixture
def open_with(token_project):
    """`open_with(user_config_text, token=...)` opens the project (OP_SERVICE_ACCOUNT_TOKEN: TOKEN by default)."""
    return token_project("OP_SERVICE_ACCOUNT_TOKEN", TOKEN)


def test_references_resolve_with_one_sign_in_and_one_read_each_per_load(service, open_with):
    project = open_with(op_config("{user: 'op://Prod/Warehouse/user', password: 'op://Prod/Warehouse/password', "
                                  "again: 'op://Prod/Warehouse/password'}"))
    assert dict(project.context.secret("warehouse")) == {"user": "loader", "password": "wh-pass-1",
                                                         "again": "wh-pass-1"}
    assert service.sign_ins == [TOKEN]
    assert sorted(service.reads) == ["op://Prod/Warehouse/password", "op://Prod/Warehouse/user"]
    open_with(op_config("{password: 'op://Prod/Warehouse/password'}"))
    assert len(service.sign_ins) == 2 and len(service.reads) == 3  # a new load signs in and reads afresh


def test_the_sdk_parser_refuses_a_malformed_reference_before_signing_in(service, open_with):
    message = open_with.error(op_config("{password: 'op://Prod/Warehouse'}"))
    assert "'op://Prod/Warehouse' is not a 1Password secret reference" in message
    assert "secret 'warehouse'" in message and "invalid format" in message
    assert service.sign_ins == []


def test_the_real_sdk_refuses_a_malformed_token_without_showing_it(open_with):
    pytest.importorskip("onepassword")
    message = open_with.error(op_config("{password: 'op://Prod/Warehouse/password'}"), token="ops_not-base64!")
    assert "1Password refused signing in" in message and "service account token" in message
    assert "ops_not-base64!" not in message and "op://Prod/Warehouse/password" in message


def test_a_missing_item_is_one_clear_error(service, open_with):
    message = open_with.error(op_config("{password: 'op://Prod/Nothing/password'}"))
    assert "secret 'warehouse'" in message and "op://Prod/Nothing/password" in message
    assert "no item matched" in message


def test_an_error_echoing_the_token_does_not_show_it(service, open_with):
    service.errors["op://Prod/API/credential"] = f"token {TOKEN} may not read vault Prod"
    message = open_with.error(op_config("{key: 'op://Prod/API/credential'}"))
    assert TOKEN not in message and "token [token] may not read vault Prod" in message


def test_a_service_that_does_not_answer_times_out(service, open_with):
    service.delay = 5
    message = open_with.error(op_config("{key: 'op://Prod/API/credential'}",
                                           section="onepassword: {enabled: true, timeout: 0.2}\n"))
    assert "did not answer within 0.2s" in message and "onepassword.timeout" in message


def test_no_token_names_the_variable(service, open_with):
    message = open_with.error(op_config("{key: 'op://Prod/API/credential'}",
                                           section="onepassword: {enabled: true, token_env: OP_TOKEN_TEAM}\n"))
    assert "environment variable OP_TOKEN_TEAM (onepassword.token_env) is not set" in message


def test_references_need_the_section_enabled(service, open_with):
    message = open_with.error(op_config("{key: 'op://Prod/API/credential'}", section=""))
    assert "onepassword.enabled is not true" in message


def test_without_the_sdk_the_error_names_the_extra(open_with, monkeypatch):
    monkeypatch.setitem(sys.modules, "onepassword", None)
    message = open_with.error(op_config("{key: 'op://Prod/API/credential'}"))
    assert "pip install 'mxcp-pluggy[onepassword]'" in message


def test_resolving_works_inside_a_running_event_loop(service, open_with):
    async def inside() -> dict:
        return dict(open_with(op_config("{key: 'op://Prod/API/credential'}")).context.secret("warehouse"))

    assert asyncio.run(inside()) == {"key": "api-key-1"}


def test_a_reload_reads_a_rotated_secret_and_a_failed_one_keeps_the_old(service, open_with):
    project = open_with(op_config("{key: 'op://Prod/API/credential'}"))
    runtime = Runtime(project)
    with runtime:
        assert runtime.context.secret("warehouse")["key"] == "api-key-1"
        service.values["op://Prod/API/credential"] = "api-key-2"
        runtime.reload(description="test", config=True)
        runtime.wait_for_reloads(timeout=30)
        assert runtime.context.secret("warehouse")["key"] == "api-key-2"
        assert runtime.project.context is runtime.context and runtime.config_problem is None

        service.errors["op://Prod/API/credential"] = "vault Prod is not shared with this service account"
        runtime.reload(description="test", config=True)
        runtime.wait_for_reloads(timeout=30)
        assert runtime.context.secret("warehouse")["key"] == "api-key-2"
        assert "not shared with this service account" in runtime.config_problem
        assert runtime.health == (True, None)  # still serving, with what it had


def test_an_older_reading_never_replaces_a_newer_one(service, open_with):
    """Two SIGHUPs close together: the first reading is slow and holds the value from before a rotation."""
    import time

    project = open_with(op_config("{key: 'op://Prod/API/credential'}"))
    with Runtime(project) as runtime:
        service.values["op://Prod/API/credential"] = "api-key-2"
        service.delays = [1.0]
        runtime.reload(description="first", config=True)
        time.sleep(0.3)  # the first reload has read api-key-2 and is waiting on the service
        service.values["op://Prod/API/credential"] = "api-key-3"
        runtime.reload(description="second", config=True)
        runtime.wait_for_reloads(timeout=30)
        assert service.reads.count("op://Prod/API/credential") == 3
        assert runtime.context.secret("warehouse")["key"] == "api-key-3"


def test_stopping_does_not_wait_for_a_reload_still_reading_from_the_service(service, open_with):
    import time

    runtime = Runtime(open_with(op_config("{key: 'op://Prod/API/credential'}")))
    runtime.start()
    service.delay = 3
    runtime.reload(description="slow", config=True)
    time.sleep(0.2)
    started = time.monotonic()
    runtime.stop()
    assert time.monotonic() - started < 2  # the reading is abandoned; its thread gives up when it ends
    assert not runtime.started
