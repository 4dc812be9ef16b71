"""Command line of the emulator, shared by `python -m podium_client.emulator` and the Django command."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from collections.abc import Mapping, Sequence
from types import FrameType
from typing import Any, TextIO

from podium_client.emulator.export import ExportFileError
from podium_client.emulator.server import EmulatorServer
from podium_client.emulator.state import CAPABILITIES, EmulatorState, parse_capabilities


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the emulator's options to a parser (argparse or Django's CommandParser)."""
    parser.add_argument("--load", metavar="FILE.ndjson", help="v4 NDJSON export to load at start")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765, help="default 8765; 0 picks a free port")
    parser.add_argument("--token", default="dev-token", help="static bearer token (default: dev-token)")
    parser.add_argument("--dump", metavar="FILE", help="write the state as v4 NDJSON here on exit")
    parser.add_argument(
        "--capabilities",
        default="",
        help=f"Part 2 capabilities to serve, comma-separated from {', '.join(CAPABILITIES)} "
        "(default: none, Podium's published API only)",
    )
    parser.add_argument("--fail-rate", type=float, default=0.0, help="share of requests answered 5xx/429")
    parser.add_argument("--rate-limit", type=int, default=None, help="requests per minute, then 429")
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument(
        "--drop-after-commit-rate", type=float, default=0.0, help="share of writes applied then hung up on"
    )
    parser.add_argument(
        "--block-cross-location",
        action="store_true",
        help="answer 422 to cross-location merges (capability merge)",
    )
    parser.add_argument(
        "--webhook-url", default=None, help="register one organization webhook for contact events"
    )
    parser.add_argument("--webhook-secret", default=None, help="its signing secret")
    parser.add_argument("--seed", type=int, default=None, help="seed for fault injection and new uids")
    parser.add_argument("--token-ttl", type=float, default=None, help="lifetime in seconds of OAuth tokens")


def build_parser() -> argparse.ArgumentParser:
    """The standalone parser."""
    parser = argparse.ArgumentParser(prog="podium_emulator", description="Run the Podium API emulator.")
    add_arguments(parser)
    return parser


def run(options: Mapping[str, Any], out: TextIO | None = None) -> int:
    """Serve until SIGINT/SIGTERM, then stop cleanly and write `--dump` if asked; returns an exit code.

    The only line written to `out` is `Podium emulator listening on <url>`, so a parent process can
    wait for it; progress notes and errors go to stderr.
    """
    out = out or sys.stdout
    if options.get("webhook_secret") and not options.get("webhook_url"):
        print("--webhook-secret needs --webhook-url", file=sys.stderr)
        return 2
    try:
        capabilities = parse_capabilities(options.get("capabilities") or "")
    except ValueError as exc:
        print(f"--capabilities: {exc}", file=sys.stderr)
        return 2
    state = EmulatorState(options.get("seed"), capabilities=capabilities)
    if options.get("load"):
        try:
            count = state.load_file(options["load"])
        except (OSError, ExportFileError) as exc:
            print(f"cannot load {options['load']}: {exc}", file=sys.stderr)
            return 2
        print(
            f"loaded {count} contacts in {len(state.locations())} locations from {options['load']}",
            file=sys.stderr,
        )
    server = EmulatorServer(
        state,
        host=options.get("host") or "127.0.0.1",
        port=int(options.get("port") or 0),
        token=options.get("token") or "dev-token",
        fail_rate=float(options.get("fail_rate") or 0.0),
        rate_limit=options.get("rate_limit"),
        latency_ms=float(options.get("latency_ms") or 0.0),
        drop_after_commit_rate=float(options.get("drop_after_commit_rate") or 0.0),
        block_cross_location=bool(options.get("block_cross_location")),
        webhook_url=options.get("webhook_url"),
        webhook_secret=options.get("webhook_secret"),
        seed=options.get("seed"),
        token_ttl=options.get("token_ttl"),
    )
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        server.start()
        caps = ",".join(sorted(capabilities)) or "none (published API only)"
        print(f"capabilities: {caps}", file=sys.stderr, flush=True)
        print(f"Podium emulator listening on {server.url}", file=out, flush=True)
        # A bounded wait keeps the main thread returning to the interpreter, where signal handlers run.
        while not stop.is_set():
            stop.wait(0.2)
    finally:
        server.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if options.get("dump"):
        state.dump(options["dump"])
        print(f"dumped {len(state)} contacts to {options['dump']}", file=sys.stderr, flush=True)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `python -m podium_client.emulator`."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return run(vars(args))
