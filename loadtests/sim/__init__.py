"""Routing simulation: the gateway's replica router against round-robin and random.

`python -m loadtests.sim --out DIR` runs 1,000 Zipf-popular adapters over 4..64 replicas and
writes a table, `sim.json` and PNG plots; `simulate(SimConfig(...), policy)` runs one cell.
"""

from loadtests.sim.model import POLICIES, SimConfig, SimResult, simulate, zipf_weights
from loadtests.sim.report import table, write_outputs

__all__ = [
    "POLICIES",
    "SimConfig",
    "SimResult",
    "simulate",
    "table",
    "write_outputs",
    "zipf_weights",
]
