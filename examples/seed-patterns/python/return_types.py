"""Return types: the function's result matches the endpoint's declared return type."""


def list_items() -> list:
    return [{"id": 1, "name": "pen"}, {"id": 2, "name": "ink"}]


def get_stats() -> dict:
    return {"total": 100, "active": 75}


def count_items() -> int:
    return 42
