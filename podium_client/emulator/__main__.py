"""`python -m podium_client.emulator` runs the emulator without Django."""

from __future__ import annotations

import sys

from podium_client.emulator.cli import main

sys.exit(main())
