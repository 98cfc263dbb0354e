"""The simulation's outputs: a text table, `sim.json` and PNG plots per metric."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from loadtests.sim.model import SimConfig, SimResult

__all__ = ["PLOTTED", "table", "write_outputs"]

# (field, column title, plot title); the first two are the headline figures.
PLOTTED: tuple[tuple[str, str, str], ...] = (
    ("loads_per_1k", "loads/1k", "Adapter loads per 1,000 requests (lower is better)"),
    ("slot_hit_ratio", "slot hit", "GPU slot hit ratio (higher is better)"),
    ("held_hit_ratio", "held hit", "Adapter already held by the replica (higher is better)"),
    ("imbalance", "served max/mean", "Requests served per replica, max / mean"),
    ("inflight_imbalance", "in-flight max/mean", "Requests in flight per replica, max / mean"),
    ("replicas_per_adapter", "replicas/adapter", "Distinct replicas serving an adapter"),
    ("spilled_ratio", "spilled", "Requests spilled past their home replica"),
)


def table(results: Sequence[SimResult]) -> str:
    """A fixed-width table, one row per (replicas, policy)."""
    headers = ["replicas", "policy", *(title for _, title, _ in PLOTTED)]
    rows = [
        [str(r.replicas), r.policy, *(f"{getattr(r, name):.3f}" for name, _, _ in PLOTTED)]
        for r in results
    ]
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(headers)]
    lines = ["  ".join(h.rjust(w) for h, w in zip(headers, widths, strict=True))]
    lines += ["  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    return "\n".join(lines)


def write_outputs(out: Path, config: SimConfig, results: Sequence[SimResult]) -> list[Path]:
    """Write `sim.json`, `sim.txt` and one PNG per plotted metric under `out`."""
    out.mkdir(parents=True, exist_ok=True)
    payload: dict[str, Any] = {
        "config": {k: v for k, v in vars(config).items() if k != "replicas"},
        "results": [r.to_dict() for r in results],
    }
    written = [out / "sim.json", out / "sim.txt"]
    written[0].write_text(json.dumps(payload, indent=2) + "\n")
    written[1].write_text(table(results) + "\n")
    written += _plots(out, results)
    return written


def _plots(out: Path, results: Sequence[SimResult]) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")  # files only; no display on servers and in tests
    import matplotlib.pyplot as plt

    policies = list(dict.fromkeys(r.policy for r in results))
    written = []
    for name, _, title in PLOTTED:
        fig, ax = plt.subplots(figsize=(6, 4))
        for policy in policies:
            points = sorted((r.replicas, getattr(r, name)) for r in results if r.policy == policy)
            ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=policy)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("replicas")
        ax.set_title(title, fontsize=10)
        ax.grid(True, alpha=0.3)
        ax.legend()
        fig.tight_layout()
        path = out / f"{name}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    return written
