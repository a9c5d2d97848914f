"""Shared modules: helpers imported from python/utils/."""
from utils.validators import normalise_email, validate_email


def process_user(email: str) -> dict:
    email = normalise_email(email)
    if not validate_email(email):
        return {"error": "Invalid email"}
    return {"status": "ok", "email": email}
