"""State that survives a persistent trial process's re-runs of persistent.py
(an imported module stays in sys.modules, as a library's cache would):
LEAK_MB appends to `held` on every trial, so the process's memory grows."""
from typing import List

held: List[bytes] = []


def leak(mib: int) -> int:
    """Hold `mib` MiB more, for the life of the process; the total held, in MiB."""
    if mib > 0:
        held.append(b"\x01" * (mib << 20))
    return sum(len(b) for b in held) >> 20
