"""`python -m loadtests.sim --out DIR`: the routing simulation over a grid of fleet sizes."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from loadtests.sim.model import POLICIES, SimConfig, simulate
from loadtests.sim.report import table, write_outputs

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    defaults = SimConfig()
    parser = argparse.ArgumentParser(
        prog="python -m loadtests.sim",
        description="Simulate adapter-affinity routing against round-robin and random over "
        "N vLLM replicas (no GPU, no network).",
    )
    parser.add_argument("--out", type=Path, required=True, help="folder for JSON, table, PNGs")
    parser.add_argument(
        "--replicas", type=int, nargs="+", default=[4, 8, 16, 32, 64], help="fleet sizes"
    )
    parser.add_argument("--policies", nargs="+", choices=sorted(POLICIES), default=list(POLICIES))
    for field in dataclasses.fields(SimConfig):
        if field.name == "replicas":
            continue
        default = getattr(defaults, field.name)
        parser.add_argument(
            f"--{field.name.replace('_', '-')}",
            type=type(default),
            default=default,
            help=f"{field.metadata.get('doc', field.name)} (default {default})",
        )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    base = {
        f.name: getattr(args, f.name) for f in dataclasses.fields(SimConfig) if f.name != "replicas"
    }
    try:
        configs = [SimConfig(replicas=n, **base) for n in args.replicas]
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    results = [simulate(config, policy) for config in configs for policy in args.policies]
    print(table(results))
    for path in write_outputs(args.out, configs[0], results):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
