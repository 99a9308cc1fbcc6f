"""Command line: ``python -m personalizer serve [--host 127.0.0.1] [--port 8000] [--data DIR] [--key KEY]``.

The key may also come from ``PERSONALIZER_KEY`` (preferred: a ``--key`` argument is
visible to other users in the process list). The key is never printed or logged.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from .server import DEFAULT_MAX_BODY_BYTES


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and run the chosen command; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m personalizer",
                                     description="Personalizer Studio: a self-hosted Personalizer.")
    commands = parser.add_subparsers(dest="command", required=True)
    serve_cmd = commands.add_parser("serve", help="run the Personalizer-compatible REST server")
    serve_cmd.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1)")
    serve_cmd.add_argument("--port", type=int, default=8000, help="TCP port (default 8000)")
    serve_cmd.add_argument("--data", default=None,
                           help="data directory (default $PERSONALIZER_HOME or ./.personalizer)")
    serve_cmd.add_argument("--key", default=None,
                           help="subscription key clients must send in Ocp-Apim-Subscription-Key "
                                "(default $PERSONALIZER_KEY, preferred: arguments show in the process list; "
                                "none means no authentication)")
    serve_cmd.add_argument("--max-body-bytes", type=int, default=DEFAULT_MAX_BODY_BYTES,
                           help=f"largest JSON request body (default {DEFAULT_MAX_BODY_BYTES})")
    serve_cmd.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    serve_cmd.add_argument("--access-log", action="store_true", help="log every request line (off: faster)")
    args = parser.parse_args(argv)

    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s:     %(message)s")
    key = args.key if args.key is not None else os.environ.get("PERSONALIZER_KEY") or None
    from .contract import PersonalizerError
    from .server import serve

    try:
        serve(args.host, args.port, args.data, key, max_body_bytes=args.max_body_bytes,
              log_level=args.log_level, access_log=args.access_log)
    except (PersonalizerError, ValueError) as exc:  # e.g. the data directory is in use, a bad key
        print(f"error: {exc.message if isinstance(exc, PersonalizerError) else exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
