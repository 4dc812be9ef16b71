"""A Podium emulator: a real HTTP server with real state, Podium's published v4 API, switchable faults.

    state = EmulatorState.from_file("demo.ndjson")
    with EmulatorServer(state, fail_rate=0.1) as server:
        ...  # point a client at server.url with server.token

Part 2 capabilities (`merge`, `restore`, `soft-delete`) are served only when switched on
(`EmulatorServer(capabilities="merge,restore")`, `--capabilities`). Run it from the command line with
`python -m podium_client.emulator --load FILE` (or the Django management command `podium_emulator`).
Everything here works with plain dicts and JSON in Podium's v4 shapes.
"""

from __future__ import annotations

from podium_client.emulator.errors import EmulatorError
from podium_client.emulator.export import ExportFileError
from podium_client.emulator.server import CONFIG_KEYS, DEFAULT_SCOPES, EmulatorServer
from podium_client.emulator.shapes import ShapeError
from podium_client.emulator.state import CAPABILITIES, EmulatorState

__all__ = [
    "CAPABILITIES",
    "CONFIG_KEYS",
    "DEFAULT_SCOPES",
    "EmulatorError",
    "EmulatorServer",
    "EmulatorState",
    "ExportFileError",
    "ShapeError",
]
