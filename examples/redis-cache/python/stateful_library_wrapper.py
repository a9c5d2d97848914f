"""Pattern 6: a library that keeps state (a Redis connection pool), opened on_init and closed on_shutdown."""
from mxcp.runtime import get_secret, on_init, on_shutdown

redis_client = None


@on_init
def connect_redis() -> None:
    global redis_client
    from redis import Redis

    secret = get_secret("redis")
    if secret:
        redis_client = Redis(
            host=secret["host"],
            port=int(secret.get("port", 6379)),
            password=secret.get("password"),
            decode_responses=True,
            socket_timeout=5,
            socket_connect_timeout=5,
        )


@on_shutdown
def disconnect_redis() -> None:
    global redis_client
    if redis_client is not None:
        redis_client.close()
        redis_client = None


def _not_configured() -> dict:
    return {"error": "Redis not configured"}


def cache_set(key: str, value: str, ttl: int = 3600) -> dict:
    if redis_client is None:
        return _not_configured()
    try:
        redis_client.set(key, value, ex=ttl)
        return {"status": "success", "key": key, "ttl": ttl}
    except Exception as exc:  # noqa: BLE001 - the model gets a readable error
        return {"error": str(exc)}


def cache_get(key: str) -> dict:
    if redis_client is None:
        return _not_configured()
    try:
        value = redis_client.get(key)
        return {"key": key, "value": value, "found": value is not None}
    except Exception as exc:  # noqa: BLE001
        return {"error": str(exc)}


def cache_remember(key: str, value: str, ttl: int = 60) -> dict:
    """Store, then read back through the same client: one round trip through the server."""
    stored = cache_set(key, value, ttl)
    if "error" in stored:
        return stored
    read = cache_get(key)
    remaining = redis_client.ttl(key)
    return {"key": key, "value": read.get("value"), "found": read.get("found"), "ttl_set": 0 < remaining <= ttl}


def cache_ping() -> dict:
    if redis_client is None:
        return _not_configured()
    try:
        return {"connected": bool(redis_client.ping())}
    except Exception as exc:  # noqa: BLE001
        return {"connected": False, "error": str(exc)}
