"""The device gateway: wire protocol, device sessions, presence and the device client.

Filled in by the device relay issue; the package exists so that the import direction of
ARCHITECTURE.md is checked from the start.
"""

__all__: list[str] = []
