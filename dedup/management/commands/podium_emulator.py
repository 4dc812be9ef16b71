"""``manage.py podium_emulator --load FILE.ndjson --port N [...]``: run the Podium API emulator.

A thin wrapper: the emulator lives in ``podium_client.emulator`` (``python -m podium_client.emulator``
runs the same thing without Django).
"""

from __future__ import annotations

import sys
from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from podium_client.emulator.cli import add_arguments, run


class Command(BaseCommand):
    help = "Run the Podium API emulator until Ctrl-C/SIGTERM, optionally dumping its state on exit."
    requires_system_checks: list[str] = []

    def add_arguments(self, parser: CommandParser) -> None:
        add_arguments(parser)

    def handle(self, *args: Any, **options: Any) -> None:
        # The real stdout, unbuffered line by line: whoever started us waits for the "listening" line.
        code = run(options, out=sys.stdout)
        if code:
            sys.exit(code)
