"""What one step's eviction did, as every cache kind reports it to the decode loop."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class EvictionEvent:
    step: int  # index t of the token whose append triggered the eviction
    length_before: int  # |C_t + [t]|
    length_after: int  # |C_{t+1}|
    evicted: int  # how many entries left the cache
    reinserted: int = 0  # refresh: evicted tokens put back at the tail
