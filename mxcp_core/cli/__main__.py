"""`python -m mxcp_core.cli`: the `mxcp` command, for when its console script is not at hand."""
from . import main

if __name__ == "__main__":
    main()
