"""Error handling: return an error dict the model can read instead of raising."""
import importlib


def safe_divide(a: float, b: float) -> dict:
    if b == 0:
        return {"error": "Division by zero"}
    return {"result": a / b}


def safe_library_call(library: str) -> dict:
    try:
        module = importlib.import_module(library)
    except ImportError as exc:
        return {"error": "Library not installed", "message": str(exc), "fix": f"pip install {library}"}
    except Exception as exc:  # noqa: BLE001 - any other failure becomes a readable error
        return {"error": "Unexpected error", "type": type(exc).__name__}
    return {"success": True, "library": module.__name__}
