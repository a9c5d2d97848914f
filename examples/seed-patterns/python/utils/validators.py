"""Shared helpers: python/ is on the import path, so tools import them as `utils.validators`."""
import re

_EMAIL = re.compile(r"^[\w.+-]+@[\w-]+(\.[\w-]+)+$")


def validate_email(email: str) -> bool:
    return bool(_EMAIL.match(email))


def normalise_email(email: str) -> str:
    return email.strip().lower()
