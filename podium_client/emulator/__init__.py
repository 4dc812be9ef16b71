"""A Podium emulator: a real HTTP server with real state and switchable failure modes.

    state = EmulatorState.from_file("demo.ndjson")
    with EmulatorServer(state, fail_rate=0.1) as server:
        client = PodiumClient(server.url, access_token=server.token)

Run it from the command line with `python -m podium_client.emulator --load FILE` (or the Django
management command `podium_emulator`).
"""

from __future__ import annotations

from podium_client.emulator.server import CONFIG_KEYS, EmulatorServer
from podium_client.emulator.state import EmulatorError, EmulatorState

__all__ = ["CONFIG_KEYS", "EmulatorError", "EmulatorServer", "EmulatorState"]
