"""Lifecycle hooks: a Python resource (here a small stand-in for an HTTP client) created at start-up."""
from mxcp.runtime import on_init, on_shutdown


class FakeClient:
    """Stands in for httpx.Client: the example must run offline."""

    def __init__(self) -> None:
        self.closed = False
        self.requests = 0

    def get(self, path: str) -> dict:
        self.requests += 1
        return {"path": path, "status": 200}

    def close(self) -> None:
        self.closed = True


client = None


@on_init
def setup() -> None:
    global client
    client = FakeClient()


@on_shutdown
def cleanup() -> None:
    global client
    if client is not None:
        client.close()
        client = None


def client_status(path: str = "/health") -> dict:
    if client is None:
        return {"error": "client not initialised"}
    response = client.get(path)
    return {"initialised": True, "closed": client.closed, "response": response}
