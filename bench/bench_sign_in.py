"""What sign-in costs: verifying a bearer token per request, in process and through `mxcp serve` over HTTP.

    python bench/bench_sign_in.py [--tokens 2000] [--calls 1500] [--rounds 3]

A provider is simulated by a real HTTP server on 127.0.0.1 (this script, uvicorn in a thread) publishing OpenID
discovery and a JWKS with an RSA, an EC P-256 and an Ed25519 key; tokens are signed with those keys.

- In process: `TokenVerifier.verify_token` p50 for RS256, ES256 and EdDSA tokens seen for the first time, against
  the reference of the same run: PyJWT's own `jwt.decode` of the token with the key already in hand (the floor:
  signature, claims); and for the same token again (a verified token is remembered for up to 60 s).
- Over HTTP: sequential `tools/call` requests per second to two `mxcp serve` processes on the same project, one
  without sign-in and one in verifier mode (every request carries an RS256 token), and their ratio.
Each figure is the best of several rounds. Not a test: nothing here asserts; it prints the figures.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx2
import jwt
import uvicorn
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route

ROOT = Path(__file__).resolve().parent.parent
KEYS = {
    "rsa-1": ("RS256", rsa.generate_private_key(public_exponent=65537, key_size=2048), RSAAlgorithm),
    "ec-1": ("ES256", ec.generate_private_key(ec.SECP256R1()), ECAlgorithm),
    "ed-1": ("EdDSA", ed25519.Ed25519PrivateKey.generate(), OKPAlgorithm),
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def provider_app(issuer: str) -> Starlette:
    keys = []
    for kid, (alg, private, algorithm) in KEYS.items():
        jwk = algorithm.to_jwk(private.public_key(), as_dict=True)
        keys.append({**jwk, "kid": kid, "alg": alg, "use": "sig"})

    async def discovery(request):
        return JSONResponse({"issuer": issuer, "jwks_uri": f"{issuer}/jwks", "authorization_endpoint":
                             f"{issuer}/authorize", "token_endpoint": f"{issuer}/token"})

    async def jwks(request):
        return JSONResponse({"keys": keys})

    return Starlette(routes=[Route("/.well-known/openid-configuration", discovery), Route("/jwks", jwks)])


@contextlib.contextmanager
def provider() -> str:
    port = free_port()
    issuer = f"http://127.0.0.1:{port}"
    server = uvicorn.Server(uvicorn.Config(provider_app(issuer), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.02)
    try:
        yield issuer
    finally:
        server.should_exit = True
        thread.join(5)


def token(issuer: str, kid: str, audience: str) -> str:
    alg, private, _ = KEYS[kid]
    now = int(time.time())
    claims = {"iss": issuer, "sub": "user-1", "aud": audience, "iat": now, "exp": now + 3600,
              "preferred_username": "bench", "scope": "mcp:read", "client_id": "bench"}
    return jwt.encode(claims, private, algorithm=alg, headers={"kid": kid})


def in_process(issuer: str, count: int, rounds: int) -> dict[str, tuple[float, float, float]]:
    """Per algorithm, p50 µs: a token seen for the first time (the remembered answers turned off), the same token
    again (remembered), and the reference (PyJWT's decode with the key in hand)."""
    from mxcp_core.sign_in import ProviderConnection
    from mxcp_plugins.auth.tokens import VerifiedTokens, build_verifier

    audience = "http://127.0.0.1:9/mcp"
    figures: dict[str, tuple[float, float, float]] = {}

    async def p50(call: Any) -> float:
        best = float("inf")
        for _ in range(rounds):
            times = []
            for _ in range(count):
                started = time.perf_counter()
                await call()
                times.append(time.perf_counter() - started)
            best = min(best, statistics.median(times) * 1e6)
        return best

    async def main() -> None:
        async with httpx2.AsyncClient(timeout=10) as http:
            connection = ProviderConnection(client_id="bench", config_url=f"{issuer}/.well-known/openid-configuration")
            verifier, _ = await build_verifier(connection, resource_url=audience, http=http)
            remembered = verifier.jwt.verified
            for kid, (alg, private, _) in KEYS.items():
                signed = token(issuer, kid, audience)
                public = private.public_key()
                assert await verifier.verify_token(signed) is not None  # warm: the JWKS is fetched once
                verifier.jwt.verified = VerifiedTokens(0, 0)
                first = await p50(lambda: verifier.verify_token(signed))
                verifier.jwt.verified = remembered
                again = await p50(lambda: verifier.verify_token(signed))

                async def floor_call() -> None:
                    jwt.decode(signed, public, algorithms=[alg], audience=audience, issuer=issuer)

                figures[alg] = (first, again, await p50(floor_call))

    asyncio.run(main())
    return figures


PROJECT = {
    "mxcp-site.yml": "mxcp: 1\nproject: bench\nprofile: default\n",
    "tools/hello.yml": "mxcp: 1\ntool:\n  name: hello\n  parameters: []\n  return: {type: string}\n"
                       "  source: {code: \"SELECT 'hi'\"}\n",
}


def write_project(root: Path, issuer: str) -> tuple[Path, Path]:
    for relative, text in PROJECT.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    open_config = root / "open.yml"
    open_config.write_text("mxcp: 1\n", encoding="utf-8")
    signed_config = root / "signed.yml"
    signed_config.write_text(f"""\
mxcp: 1
projects:
  bench:
    profiles:
      default:
        auth:
          mode: verifier
          provider: oidc
          oidc: {{config_url: "{issuer}/.well-known/openid-configuration", client_id: bench}}
""", encoding="utf-8")
    return open_config, signed_config


@contextlib.contextmanager
def serving(root: Path, config: Path) -> str:
    port = free_port()
    env = {**os.environ, "MXCP_CONFIG": str(config),
           "MXCP_DISABLE_PLUGINS": "example_functions,example_tools,example_vault"}
    process = subprocess.Popen(
        [sys.executable, "-c", "from mxcp_core.cli import main; main()", "serve", "--transport", "streamable-http",
         "--host", "127.0.0.1", "--port", str(port), "--stateless", "--json-response"],
        cwd=root, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        while True:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            if process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"server did not start: {process.stderr.read().decode(errors='replace')}")
            time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(10)


def calls_per_second(url: str, bearer: str | None, calls: int, rounds: int) -> float:
    headers = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json",
               "mcp-protocol-version": "2025-06-18"}
    if bearer:
        headers["Authorization"] = f"Bearer {bearer}"
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "hello", "arguments": {}}}
    best = 0.0
    with httpx2.Client(timeout=30, headers=headers) as http:
        answer = http.post(f"{url}/mcp", json=body)
        if answer.status_code != 200 or '"isError":true' in answer.text:
            raise SystemExit(f"the tool call failed: {answer.status_code} {answer.text[:300]}")
        for _ in range(rounds):
            started = time.perf_counter()
            for _ in range(calls):
                http.post(f"{url}/mcp", json=body)
            best = max(best, calls / (time.perf_counter() - started))
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=2000, help="verifications per round and algorithm")
    parser.add_argument("--calls", type=int, default=1500, help="HTTP calls per round")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    with provider() as issuer:
        print("token verification in process (p50, best of rounds; reference: PyJWT decode with the key in hand):")
        for alg, (first, again, floor) in in_process(issuer, args.tokens, args.rounds).items():
            print(f"  {alg:6} first sight {first:6.1f} µs (ratio {first / floor:4.2f}x, +{first - floor:.1f} µs)   "
                  f"same token again {again:5.1f} µs   reference {floor:6.1f} µs")
        with tempfile.TemporaryDirectory() as folder:
            root = Path(folder)
            open_config, signed_config = write_project(root, issuer)
            with serving(root, open_config) as url:
                plain = calls_per_second(url, None, args.calls, args.rounds)
            with serving(root, signed_config) as url:
                signed = calls_per_second(url, token(issuer, "rsa-1", f"{url}/mcp"), args.calls, args.rounds)
    print("sequential tools/call over HTTP (stateless, JSON responses, best of rounds):")
    print(f"  no sign-in        {plain:7.0f} calls/s")
    print(f"  verifier (RS256)  {signed:7.0f} calls/s   ratio {signed / plain:4.2f}   "
          f"(+{(1 / signed - 1 / plain) * 1e6:.0f} µs per call)")


if __name__ == "__main__":
    main()
