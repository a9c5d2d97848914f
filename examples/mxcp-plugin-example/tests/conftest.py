"""Run the tests from a checkout too: put src/ on the path when the package is not installed.

The fixtures (`mxcp_project_factory`, `mxcp_client`, `mxcp_client_call`, `mxcp_plugin`) come from MXCP's pytest
plugin, which pytest loads by itself once mxcp-pluggy is installed.
"""
import importlib.util
import sys
from pathlib import Path

if importlib.util.find_spec("mxcp_plugin_example") is None:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))
