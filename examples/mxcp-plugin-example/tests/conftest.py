"""Run the tests from a checkout too: import the package from src/ when it is not installed.

The package is imported from src/ without putting src/ on sys.path: a build of the package (a non-editable
`pip install`) leaves src/mxcp_plugin_example.egg-info behind, and with src/ on sys.path importlib.metadata
would take that leftover for an installed distribution for the whole test session, so the plugin's entry points
would look installed to MXCP's own tests (tests/) run in the same session while the `mxcp` subprocesses they
start do not see them. Uninstalled, the entry point tests here skip with the reason.

The fixtures (`mxcp_project_factory`, `mxcp_client`, `mxcp_client_call`, `mxcp_plugin`) come from MXCP's pytest
plugin, which pytest loads by itself once mxcp-pluggy is installed.
"""
import importlib.util
import sys
from pathlib import Path

if importlib.util.find_spec("mxcp_plugin_example") is None:
    _package = Path(__file__).resolve().parent.parent / "src" / "mxcp_plugin_example"
    _spec = importlib.util.spec_from_file_location(
        "mxcp_plugin_example", _package / "__init__.py", submodule_search_locations=[str(_package)]
    )
    _module = importlib.util.module_from_spec(_spec)
    sys.modules[_spec.name] = _module
    _spec.loader.exec_module(_module)
