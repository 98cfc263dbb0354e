"""`tunegate tune RECIPE [key=value ...]`: train, evaluate, publish."""

from __future__ import annotations

import argparse
from pathlib import Path

from tunegate.config import Settings


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = sub.add_parser(
        "tune",
        help="train a recipe (LoRA or full), evaluate it against the base, publish it",
        description="Overrides are recipe keys, e.g. `lr=5e-4 epochs=2 base=tiny-random-llama`.",
    )
    parser.add_argument(
        "recipe", type=Path, help="recipe YAML, e.g. recipes/telecom-routing/lora.yaml"
    )
    add_run_arguments(parser)
    parser.set_defaults(func=_tune)


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """Overrides, --resume and --backend: shared by every command that trains a recipe."""
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="recipe overrides")
    parser.add_argument(
        "--resume",
        nargs="?",
        const="latest",
        metavar="RUN_DIR",
        help="continue from the last checkpoint of RUN_DIR (default: the recipe's latest run)",
    )
    parser.add_argument(
        "--backend", choices=["auto", "vllm", "transformers"], help="generation for evaluation"
    )


def resume_folder(args: argparse.Namespace, settings: Settings, name: str) -> Path | None:
    """The run folder `--resume` names (or the recipe's latest run), None without it."""
    from tuner.train import latest_run

    if args.resume == "latest":
        return latest_run(settings.runs_dir, name)
    if not args.resume:
        return None
    resume = Path(args.resume).expanduser().resolve()
    if not (resume / "recipe.yaml").is_file():
        raise FileNotFoundError(f"{resume} is not a run folder (no recipe.yaml)")
    return resume


def _tune(args: argparse.Namespace, settings: Settings) -> int:
    from tuner.pipeline import tune
    from tuner.recipe import load_recipe

    if not args.recipe.is_file():
        raise FileNotFoundError(f"no such recipe: {args.recipe}")
    recipe = load_recipe(args.recipe, args.overrides)
    resume = resume_folder(args, settings, recipe.name)
    outcome = tune(
        recipe,
        settings.home,
        settings.tuner,
        settings.store,
        resume=resume,
        backend=args.backend,
    )
    if outcome.reference:
        print(outcome.reference)
    return 0
