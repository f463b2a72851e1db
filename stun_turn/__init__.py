"""A generic STUN/TURN server library (sans-IO core, trio drivers).

Filled in by the STUN/TURN issue; the package exists so that the import direction of
ARCHITECTURE.md is checked from the start.
"""

__all__: list[str] = []
