"""``python -m tests.authserver --port P --state-dir DIR``: serve the authorization server on 127.0.0.1.

Prints exactly one stdout line, ``READY http://127.0.0.1:<port>``, once the socket listens (``--port 0`` picks a
free port and the line tells which). Everything else goes to stderr. SIGTERM / SIGINT stop it cleanly (exit 0).
"""
from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from pathlib import Path

from werkzeug.serving import make_server

from .app import create_app

HOST = "127.0.0.1"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.authserver", description=__doc__)
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (0: any free port)")
    parser.add_argument("--state-dir", type=Path, required=True, help="where keys.json is kept")
    args = parser.parse_args(argv)

    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="authserver %(levelname)s %(name)s: %(message)s")
    app = create_app(args.state_dir)
    server = make_server(HOST, args.port, app, threaded=True)
    issuer = f"http://{HOST}:{server.server_port}"
    app.config["ISSUER"] = issuer

    def stop(signum, _frame):
        logging.getLogger("authserver").info("signal %s: stopping", signum)
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)

    sys.stdout.write(f"READY {issuer}\n")
    sys.stdout.flush()
    try:
        server.serve_forever()
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
