"""The pluggy markers of the `mxcp` project name."""
import pluggy

PROJECT_NAME = "mxcp"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)
