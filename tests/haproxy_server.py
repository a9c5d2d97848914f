"""A real HAProxy in front of mxcp replicas, for tests and bench/bench_scale.py.

`/usr/sbin/haproxy` (or `haproxy` on PATH) from the system's packages (`.ci/run` installs it) runs in the
foreground (`-db`) with a config generated into a temporary folder:

- a frontend on 127.0.0.1 with a free port, `balance roundrobin` over the backends;
- `option httpchk GET /health` every 300 ms: a replica answering anything but 200 (mxcp's /health says 503 when
  its last reload failed), or not answering, leaves the rotation after 2 failures and comes back after 1 success;
- `retries 2` with `option redispatch 1`: a request that cannot connect to its replica (killed, crashed, not yet
  seen DOWN by the health check) is retried on another one instead of answered 503;
- `option http-server-close` and `http-reuse never`: every request gets its own server-side connection, so
  consecutive requests of one client connection are balanced one by one instead of sticking to one replica;
- a stats page on another free port, whose CSV tells which servers are UP (`wait_until_up`).

Tests skip, naming the package to install, only when no HAProxy binary exists here.
"""
from __future__ import annotations

import contextlib
import csv
import io
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path

from server_helpers import free_port, stop_process

SKIP_REASON = "HAProxy is not installed: apt-get install haproxy (.ci/run installs it)"


def haproxy_binary() -> str | None:
    if Path("/usr/sbin/haproxy").exists():
        return "/usr/sbin/haproxy"
    return shutil.which("haproxy")


def config_text(port: int, stats_port: int, backends: Sequence[int], *, keep_alive: bool = False) -> str:
    """The HAProxy config: round robin over `backends` (ports on 127.0.0.1), each health-checked on /health.

    `keep_alive`: server-side connections are kept and shared (`http-reuse always`) instead of one per request;
    HAProxy still balances each request on its own.
    """
    connections = ("    # Keep server-side connections and share them between requests: each request is still balanced\n"
                   "    # on its own, without a new TCP connection to the replica each time.\n"
                   "    option http-keep-alive\n    http-reuse always") if keep_alive else (
                   "    # One server-side connection per request: consecutive requests of a keep-alive client are\n"
                   "    # balanced one by one (stateless replicas need no stickiness).\n"
                   "    option http-server-close\n    http-reuse never")
    servers = "\n".join(
        f"    server replica{i + 1} 127.0.0.1:{backend} check" for i, backend in enumerate(backends))
    return f"""\
global
    maxconn 4096

defaults
    mode http
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    # A request whose connection to a replica fails (killed, crashed, not yet seen DOWN by the health check) is
    # retried on another replica instead of answered 503: it never reached the first, so no call runs twice.
    retries 2
    option redispatch 1
{connections}

frontend mcp
    bind 127.0.0.1:{port}
    default_backend replicas

backend replicas
    balance roundrobin
    option httpchk GET /health
    http-check expect status 200
    default-server inter 300ms fall 2 rise 1
{servers}

frontend stats
    bind 127.0.0.1:{stats_port}
    stats enable
    stats uri /stats
"""


class HAProxy:
    """One running HAProxy: `url` is the frontend's base URL (http://127.0.0.1:<port>)."""

    def __init__(self, binary: str, backends: Sequence[int], folder: Path, *, keep_alive: bool = False) -> None:
        self.binary = binary
        self.keep_alive = keep_alive
        self.backends = list(backends)
        self.port = free_port()
        self.stats_port = free_port()
        self.folder = Path(folder)
        self.config = self.folder / "haproxy.cfg"
        self.log = self.folder / "haproxy.log"
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        self.config.write_text(config_text(self.port, self.stats_port, self.backends, keep_alive=self.keep_alive), encoding="utf-8")
        checked = subprocess.run([self.binary, "-c", "-f", str(self.config)], capture_output=True, text=True,
                                 timeout=30, check=False)
        if checked.returncode != 0:
            raise RuntimeError(f"HAProxy refused its config:\n{checked.stdout}{checked.stderr}")
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen([self.binary, "-db", "-f", str(self.config)], stdin=subprocess.DEVNULL,
                                            stdout=log, stderr=log)

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is not None:
            stop_process(process)

    def read_log(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def server_states(self) -> dict[str, str]:
        """`{replica1: "UP", replica2: "DOWN", ...}` from the stats page's CSV ({} while HAProxy is not ready)."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.stats_port}/stats;csv", timeout=2) as response:
                text = response.read().decode()
        except OSError:
            return {}
        rows = csv.DictReader(io.StringIO(text.lstrip("# ")))
        return {row["svname"]: row["status"] for row in rows
                if row.get("pxname") == "replicas" and row.get("svname") not in ("FRONTEND", "BACKEND")}

    def wait_until(self, expected: dict[str, str], timeout: float = 20) -> None:
        """Wait until each named server's state starts with the expected one (`UP`, `DOWN`)."""
        deadline = time.monotonic() + timeout
        states: dict[str, str] = {}
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise AssertionError(f"HAProxy exited with code {self.process.returncode}:\n{self.read_log()}")
            states = self.server_states()
            if all(states.get(name, "").startswith(state) for name, state in expected.items()):
                return
            time.sleep(0.05)
        raise AssertionError(f"HAProxy servers are {states}, not {expected} after {timeout:.0f} s:\n{self.read_log()}")

    def wait_until_up(self, timeout: float = 20) -> None:
        self.wait_until({f"replica{i + 1}": "UP" for i in range(len(self.backends))}, timeout)


@contextlib.contextmanager
def haproxy(backends: Sequence[int], folder: Path, binary: str | None = None, *,
            keep_alive: bool = False) -> Iterator[HAProxy]:
    """A started HAProxy balancing over `backends` whose servers are all UP; stopped after.

    Raises LookupError when HAProxy is not installed (tests turn it into a skip with SKIP_REASON).
    """
    binary = binary or haproxy_binary()
    if binary is None:
        raise LookupError(SKIP_REASON)
    proxy = HAProxy(binary, backends, folder, keep_alive=keep_alive)
    proxy.start()
    try:
        proxy.wait_until_up()
        yield proxy
    finally:
        proxy.stop()


def require_haproxy() -> str:
    """The HAProxy binary, or a pytest skip saying how to install it."""
    import pytest

    binary = haproxy_binary()
    if binary is None:
        pytest.skip(SKIP_REASON)
    return binary
