#!/usr/bin/env python
"""Django's command-line entry point for the dedup project."""

from __future__ import annotations

import os
import sys


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "dedup.settings")
    from django.core.management import execute_from_command_line

    from dedup.envconfig import SettingsError

    try:
        execute_from_command_line(sys.argv)
    except SettingsError as exc:
        # The message names the variable and what to set it to; a traceback would bury it.
        sys.stderr.write(f"configuration error: {exc}\n")
        sys.exit(2)


if __name__ == "__main__":
    main()
