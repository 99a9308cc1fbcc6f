"""Command line: ``python -m personalizer serve [--host 127.0.0.1] [--port 8000] [--data DIR] [--key KEY]``,
``python -m personalizer train --store URL`` and
``python -m personalizer logs export [--store DIR|URL] [--start ISO] [--end ISO] [--out FILE]``.

Keys may also come from ``PERSONALIZER_KEY`` and ``PERSONALIZER_KEY_2`` (preferred: a
``--key`` argument is visible to other users in the process list); both are valid at
once, so a key can be rotated without downtime. A key is never printed or logged.
Every other option has a ``PERSONALIZER_...`` variable too (named in ``--help``).
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

from .server import (
    DEFAULT_HEADER_TIMEOUT,
    DEFAULT_LOCK_TIMEOUT,
    DEFAULT_MAX_BODY_BYTES,
    DEFAULT_MAX_MODEL_BYTES,
    DEFAULT_TIMEOUT_KEEP_ALIVE,
)
from .settings import Settings, load_settings
from .vw.budget import DEFAULT_MAX_RANK_FEATURES


def _env(settings: Settings, name: str, default: object) -> str:
    """The ``PERSONALIZER_<NAME>`` setting or ``default``, as text: argparse converts string
    defaults with the option's type, so a bad value is a usage error, not a traceback."""
    value = getattr(settings, name)
    return str(default) if value is None else value


def _positive_seconds(text: str) -> float:
    """A positive, finite number of seconds."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be more than 0 seconds: {text!r}")
    return value


def _limit(text: str) -> int | None:
    """A positive integer, or 0 / 'none' for no limit."""
    if text.strip().lower() in ("0", "none"):
        return None
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not an integer") from None
    if value < 0:
        raise argparse.ArgumentTypeError("must be >= 0")
    return value


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and run the chosen command; returns the exit status."""
    settings = load_settings()
    parser = argparse.ArgumentParser(prog="python -m personalizer",
                                     description="Personalizer Studio: a self-hosted Personalizer.")
    commands = parser.add_subparsers(dest="command", required=True)
    _add_serve(commands, settings)
    _add_train(commands)
    _add_logs(commands)
    args = parser.parse_args(argv)

    if args.command == "logs":
        return _export_logs(args.store, args.start, args.end, args.out)
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s:     %(message)s")
    if args.command == "train":
        return _train(args.store or settings.store or "")
    return _serve(args, settings)


def _add_serve(commands: Any, settings: Settings) -> None:
    """``serve``: the REST server (role all or replica); every option also has its environment variable."""
    from .scaled import COMMAND_TIMEOUT_SECONDS

    serve_cmd = commands.add_parser("serve", help="run the Personalizer-compatible REST server")
    serve_cmd.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1)")
    serve_cmd.add_argument("--port", type=int, default=8000, help="TCP port (default 8000)")
    serve_cmd.add_argument("--data", default=None,
                           help="data directory (default $PERSONALIZER_HOME or ./.personalizer)")
    serve_cmd.add_argument("--store", default=None,
                           help="where the event log lives: a data directory (SQLite, the default) or a "
                                "postgresql://user@host:port/db URL (PostgreSQL); $PERSONALIZER_STORE. "
                                "Overrides --data")
    serve_cmd.add_argument("--key", action="append", default=None,
                           help="subscription key clients must send in Ocp-Apim-Subscription-Key; give it twice "
                                "for two valid keys (rotation). Default $PERSONALIZER_KEY and $PERSONALIZER_KEY_2, "
                                "preferred: arguments show in the process list")
    serve_cmd.add_argument("--allow-no-key", action="store_true",
                           help="serve a non-loopback host without a key (refused otherwise)")
    serve_cmd.add_argument("--max-body-bytes", type=int,
                           default=_env(settings, "max_body_bytes", DEFAULT_MAX_BODY_BYTES),
                           help=f"largest JSON request body (default {DEFAULT_MAX_BODY_BYTES}; "
                                "$PERSONALIZER_MAX_BODY_BYTES)")
    serve_cmd.add_argument("--max-model-bytes", type=int,
                           default=_env(settings, "max_model_bytes", DEFAULT_MAX_MODEL_BYTES),
                           help=f"largest model upload (default {DEFAULT_MAX_MODEL_BYTES}; "
                                "$PERSONALIZER_MAX_MODEL_BYTES)")
    serve_cmd.add_argument("--max-rank-features", type=_limit,
                           default=_env(settings, "max_rank_features", DEFAULT_MAX_RANK_FEATURES),
                           help=f"refuse a rank estimated to expand to more VW features (default "
                                f"{DEFAULT_MAX_RANK_FEATURES:,}; 0: no limit; $PERSONALIZER_MAX_RANK_FEATURES)")
    serve_cmd.add_argument("--lock-timeout", type=float, default=_env(settings, "lock_timeout", DEFAULT_LOCK_TIMEOUT),
                           help=f"seconds a call waits for the busy engine before a 503 with Retry-After (default "
                                f"{DEFAULT_LOCK_TIMEOUT:g}; $PERSONALIZER_LOCK_TIMEOUT)")
    serve_cmd.add_argument("--timeout-keep-alive", type=int,
                           default=_env(settings, "timeout_keep_alive", DEFAULT_TIMEOUT_KEEP_ALIVE),
                           help=f"seconds an idle keep-alive connection stays open (default "
                                f"{DEFAULT_TIMEOUT_KEEP_ALIVE}; $PERSONALIZER_TIMEOUT_KEEP_ALIVE)")
    serve_cmd.add_argument("--header-timeout", type=float,
                           default=_env(settings, "header_timeout", DEFAULT_HEADER_TIMEOUT),
                           help=f"seconds a client has to send a request's headers (default "
                                f"{DEFAULT_HEADER_TIMEOUT:g}; 0: no limit; $PERSONALIZER_HEADER_TIMEOUT)")
    serve_cmd.add_argument("--role", choices=["all", "replica"], default=_env(settings, "role", "all"),
                           help="all: rank, reward and learn in this process (default); replica: a stateless "
                                "API replica of a scaled-out deployment on --store postgresql://... "
                                "(run 'train' beside it); $PERSONALIZER_ROLE")
    serve_cmd.add_argument("--command-timeout", type=_positive_seconds,
                           default=_env(settings, "command_timeout", COMMAND_TIMEOUT_SECONDS),
                           help=f"replica: seconds a policy, model or log change waits for the trainer before "
                                f"it is cancelled and answered 503 (default {COMMAND_TIMEOUT_SECONDS:g}; "
                                f"$PERSONALIZER_COMMAND_TIMEOUT)")
    serve_cmd.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    serve_cmd.add_argument("--access-log", action="store_true", help="log every request line (off: faster)")


def _add_train(commands: Any) -> None:
    """``train``: the trainer of a scaled-out deployment."""
    train_cmd = commands.add_parser("train", help="run the trainer of a scaled-out deployment (PostgreSQL)")
    train_cmd.add_argument("--store", default=None,
                           help="the shared log: a postgresql://user@host:port/db URL (default $PERSONALIZER_STORE)")
    train_cmd.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])


def _add_logs(commands: Any) -> None:
    """``logs export``: the event log as JSON Lines."""
    logs_cmd = commands.add_parser("logs", help="read the event log")
    logs_commands = logs_cmd.add_subparsers(dest="logs_command", required=True)
    export_cmd = logs_commands.add_parser(
        "export", help="write the event log as JSON Lines, one event per line, in creation order",
        description="Write every logged event (any status) as JSON Lines: eventId, created, the rank request, "
                    "each slot's action and probability, every reward received, status, labels, learnSeq, modelId. "
                    "Reads without taking the log over: works while a server runs on it.")
    export_cmd.add_argument("--store", default=None,
                            help="a data directory (SQLite) or a postgresql:// URL (default as serve: "
                                 "$PERSONALIZER_STORE, else $PERSONALIZER_HOME or ./.personalizer)")
    export_cmd.add_argument("--start", default=None, help="only events created at or after this ISO-8601 time "
                                                          "(naive means UTC)")
    export_cmd.add_argument("--end", default=None, help="only events created before this ISO-8601 time")
    export_cmd.add_argument("--out", default=None, help="write to this file (replaced when complete); default stdout")


def _serve(args: argparse.Namespace, settings: Settings) -> int:
    """Run ``serve`` until stopped; 1 with one ``error:`` line when it cannot start."""
    keys = args.key if args.key is not None else settings.keys()
    from .contract import PersonalizerError
    from .server import serve

    try:
        serve(args.host, args.port, args.store or args.data, keys, allow_no_key=args.allow_no_key,
              max_body_bytes=args.max_body_bytes, max_model_bytes=args.max_model_bytes,
              lock_timeout=args.lock_timeout if args.lock_timeout > 0 else None,
              max_rank_features=args.max_rank_features, timeout_keep_alive=args.timeout_keep_alive,
              header_timeout=args.header_timeout, log_level=args.log_level, access_log=args.access_log,
              role=args.role, command_timeout=args.command_timeout)
    except (PersonalizerError, ValueError, OSError) as exc:  # e.g. the data directory is in use, a bad key
        print(f"error: {exc.message if isinstance(exc, PersonalizerError) else exc}", file=sys.stderr)
        return 1
    return 0


def _train(store: str) -> int:
    """Run the trainer (leader or standby) until SIGTERM or SIGINT."""
    import signal
    import threading

    from .contract import PersonalizerError
    from .eventstore import is_postgres_url
    from .scaled import run_trainer

    if not is_postgres_url(store):
        print("error: train needs --store postgresql://... (or $PERSONALIZER_STORE)", file=sys.stderr)
        return 1
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    try:
        run_trainer(store, stop=stop)
    except PersonalizerError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 1
    return 0


def _export_logs(store: str | None, start: str | None, end: str | None, out: str | None) -> int:
    """``logs export``: 0 when written; 2 for a bad time (a usage error), 1 when the store cannot be read."""
    import os

    from .contract import PersonalizerError
    from .logexport import export_log, parse_time

    try:
        lo, hi = parse_time(start, "--start"), parse_time(end, "--end")
    except PersonalizerError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 2
    try:
        if out is None:
            export_log(sys.stdout, store, lo, hi)
            sys.stdout.flush()
            return 0
        partial = f"{out}.partial"  # a failed export never leaves a truncated file where a complete one was
        try:
            with open(partial, "w", encoding="utf-8") as target:
                export_log(target, store, lo, hi)
            os.replace(partial, out)
        finally:
            if os.path.exists(partial):
                os.unlink(partial)
    except PersonalizerError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # e.g. piped into head: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except OSError as exc:  # --out in a missing directory, a full disk
        print(f"error: cannot write {out}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
