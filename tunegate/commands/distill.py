"""`tunegate distill RECIPE [key=value ...]`: distil a teacher into a smaller model, publish it."""

from __future__ import annotations

import argparse
from pathlib import Path

from tunegate.commands.tune import add_run_arguments, resume_folder
from tunegate.config import Settings


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = sub.add_parser(
        "distill",
        help="distil a published teacher into a shallower student; evaluate, time, publish it",
        description="Overrides are recipe keys, e.g. `teacher=telecom@2 student_layers=every:4`.",
    )
    parser.add_argument(
        "recipe", type=Path, help="recipe YAML, e.g. recipes/telecom-routing/distill.yaml"
    )
    add_run_arguments(parser)
    parser.set_defaults(func=_distill)


def _distill(args: argparse.Namespace, settings: Settings) -> int:
    from tuner.distill import distill
    from tuner.recipe import load_recipe

    if not args.recipe.is_file():
        raise FileNotFoundError(f"no such recipe: {args.recipe}")
    recipe = load_recipe(args.recipe, args.overrides)
    if recipe.method != "distill":
        raise ValueError(f"{args.recipe} is a {recipe.method} recipe: run it with `tunegate tune`")
    outcome = distill(
        recipe,
        settings.home,
        settings.tuner,
        settings.store,
        resume=resume_folder(args, settings, recipe.name),
        backend=args.backend,
    )
    if outcome.reference:
        print(outcome.reference)
    return 0
