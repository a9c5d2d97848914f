"""A Python tool using a secret and a plugin instance through mxcp.runtime."""
from mxcp.runtime import config, plugins


def weather_request(city: str) -> dict:
    secret = config.get_secret("weather_api")
    if not secret:
        return {"error": "weather_api secret not configured"}
    cipher = plugins.get("cipher")
    # No network in the example: describe the request that would be sent.
    return {
        "url": f"{secret['base_url']}/current?city={city}",
        "authenticated": bool(secret.get("value")),
        "city_rot13": cipher.encode(city),
        "plugins": plugins.list(),
    }
