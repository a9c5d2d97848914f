"""Configuration and secrets: config.get_secret returns the secret's parameters for the active profile."""
from mxcp.runtime import config, get_secret


def secret_summary() -> dict:
    # Never return a secret itself: report what is configured.
    api_key = config.get_secret("api_key")
    service = get_secret("api_service") or {}
    token = service.get("BEARER_TOKEN")
    return {
        "has_api_key": bool(api_key and api_key.get("value")),
        "api_key_length": len(api_key["value"]) if api_key else 0,
        "has_bearer_token": bool(token),
        "header_names": sorted(service.get("EXTRA_HTTP_HEADERS", {})),
        "missing_secret": config.get_secret("not_configured"),
        "project": config.get_setting("project"),
    }
