"""Recipe to published artifact: train, evaluate against the base model, publish with a card.

Evaluation runs on the run folder before publishing, so the card is complete in one atomic
publish; `evaluate_reference` re-evaluates a published artifact and merges the results into
its card.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from adapters_store.bases import BaseRegistry
from tuner.backends import Backend, ModelSpec, TransformersBackend, VllmBackend, choose_backend
from tuner.config import TunerConfig
from tuner.distributed import is_main_process, main_process_echo
from tuner.evaluate import EvalResult, evaluate, format_table, load_cases
from tuner.hardware import configure_threads
from tuner.recipe import Recipe
from tuner.tasks import Task, get_task
from tuner.train import RunResult, TrainingError, ensure_base, train

__all__ = [
    "TuneOutcome",
    "build_card",
    "evaluate_reference",
    "evaluate_run",
    "make_backend",
    "run_spec",
    "tune",
    "version_spec",
]

Printer = Callable[[str], None]


@dataclass(frozen=True)
class TuneOutcome:
    run: RunResult
    evaluation: EvalResult | None
    reference: str | None  # the published `name@version`


def _store(home: Path, config: Any | None = None) -> Any:
    from adapters_store.catalog import Store

    # `store.path` (a folder shared by several gateways) wins over the home's store/.
    root = getattr(config, "path", None) or home / "store"
    return Store(root, BaseRegistry(home / "models"), config)


def make_backend(name: str, config: TunerConfig) -> tuple[Backend, TransformersBackend, str]:
    """(generator, scorer, backend name); the scorer is always transformers."""
    scorer = TransformersBackend(batch_size=config.eval_batch_size)
    chosen = choose_backend(name)
    if chosen == "vllm":
        return VllmBackend(kv_cache_gib=config.vllm_kv_cache_gib), scorer, chosen
    return scorer, scorer, chosen


def trained_system_prompt(train_file: Path) -> str | None:
    """The system message the training data used (the most common one), if any."""
    counts: Counter[str] = Counter()
    with train_file.open(encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                messages = json.loads(line)["messages"]
                if messages and messages[0]["role"] == "system":
                    counts[messages[0]["content"]] += 1
    return counts.most_common(1)[0][0] if counts else None


def build_card(run: RunResult, evaluation: EvalResult | None) -> dict[str, Any]:
    recipe = run.recipe
    task = get_task(recipe.task) if recipe.task else None
    card: dict[str, Any] = {
        "base": run.base.id,
        "method": recipe.method,
        "recipe": recipe.to_dict(),
        "dataset_sha256": run.dataset_sha256,
        "system_prompt": trained_system_prompt(run.data.train),
        "task": recipe.task,
        "training": {
            "tokens": run.train_tokens,
            "seconds": round(run.train_seconds, 1),
            "tokens_per_second": round(run.tokens_per_second, 1),
            "final_loss": run.final_loss,
            "run_dir": str(run.run_dir),
        },
    }
    if task is not None:
        card["labels"] = list(task.labels)
    if evaluation is not None:
        card["metrics"] = evaluation.to_dict()
    card["profile"] = _training_profile(run, task)
    return card


def _training_profile(run: RunResult, task: Task | None) -> dict[str, Any]:
    """What `tunegate monitor` compares live traffic with (see adapters_store.profile)."""
    from transformers import AutoTokenizer

    from tuner.profile import profile_training_data

    tokenizer = AutoTokenizer.from_pretrained(run.base.path)
    heldout = run.data.valid or run.data.test
    labels = task.labels if task is not None else ()
    return profile_training_data(run.data.train, tokenizer, labels, heldout).to_card()


def run_spec(run: RunResult) -> ModelSpec:
    """How the evaluation runs a run's output: the adapter on its base, or the model."""
    if run.recipe.method == "lora":
        return ModelSpec(path=run.base.path, adapter=run.output_dir, name=run.recipe.name)
    return ModelSpec(path=run.output_dir, name=run.recipe.name)


def version_spec(version: Any, base_path: Path) -> ModelSpec:
    """How the evaluation runs a published `ArtifactVersion`: an adapter on its base's
    folder, or the model folder."""
    if version.kind == "lora":
        return ModelSpec(path=base_path, adapter=version.path, name=version.name, uid=version.uid)
    return ModelSpec(path=version.path, name=version.name, uid=version.uid)


def evaluate_run(
    run: RunResult,
    spec: ModelSpec,
    config: TunerConfig,
    backend: str | None = None,
    echo: Printer = print,
    others: Mapping[str, ModelSpec] | None = None,
) -> EvalResult | None:
    """The eval table of a run's artifact `spec` (and `others` beside it) on the run's test
    split, against the run's base; written to `eval.json`. None when the recipe skips it."""
    recipe = run.recipe
    if not recipe.evaluate or run.data.test is None:
        return None
    generator, scorer, chosen = make_backend(backend or config.eval_backend, config)
    try:
        evaluation = evaluate(
            load_cases(run.data.test, recipe.eval_limit),
            run.base.path,
            spec,
            task=get_task(recipe.task) if recipe.task else None,
            system_prompt=trained_system_prompt(run.data.train),
            few_shot_k=recipe.few_shot_k,
            generator=generator,
            backend_name=chosen,
            scorer=scorer,
            data_name=str(run.data.test),
            echo=echo,
            others=others,
        )
    finally:
        if isinstance(generator, VllmBackend):
            generator.close()
    (run.run_dir / "eval.json").write_text(json.dumps(evaluation.to_dict(), indent=2) + "\n")
    echo(format_table(evaluation))
    return evaluation


def tune(
    recipe: Recipe,
    home: Path,
    config: TunerConfig,
    store_config: Any | None = None,
    resume: Path | None = None,
    backend: str | None = None,
    echo: Printer = print,
) -> TuneOutcome:
    if recipe.method == "distill":
        raise TrainingError(
            f"recipe {recipe.name!r} is a distill recipe: run it with `tunegate distill`"
        )
    configure_threads(config.threads, main_process_echo(echo))
    run = train(recipe, home, resume=resume, echo=echo)
    if not is_main_process():
        return TuneOutcome(run, None, None)  # under accelerate: the main process goes on
    evaluation = evaluate_run(run, run_spec(run), config, backend, echo)
    reference = None
    if recipe.publish:
        kind = "lora" if recipe.method == "lora" else "model"
        version = _store(home, store_config).publish(
            run.output_dir,
            recipe.name,
            kind=kind,
            base=run.base.id,
            card=build_card(run, evaluation),
        )
        reference = version.ref
        echo(f"published {reference} ({kind}, base {run.base.id})")
    return TuneOutcome(run, evaluation, reference)


def evaluate_reference(
    ref: str,
    data: Path,
    home: Path,
    config: TunerConfig,
    store_config: Any | None = None,
    *,
    backend: str | None = None,
    task_name: str | None = None,
    few_shot_k: int | None = None,
    limit: int = 0,
    update_card: bool = True,
    echo: Printer = print,
) -> tuple[EvalResult, str]:
    """Evaluate a published artifact on `data`; merge the results into its card."""
    store = _store(home, store_config)
    version = store.resolve(ref)
    configure_threads(config.threads, echo)
    card = version.card or {}
    base = ensure_base(home / "models", version.base)
    task: Task | None = (
        get_task(task_name or card["task"]) if (task_name or card.get("task")) else None
    )
    spec = version_spec(version, base.path)
    generator, scorer, chosen = make_backend(backend or config.eval_backend, config)
    try:
        result = evaluate(
            load_cases(data, limit),
            base.path,
            spec,
            task=task,
            labels=card.get("labels"),
            system_prompt=card.get("system_prompt"),
            few_shot_k=config.few_shot_k if few_shot_k is None else few_shot_k,
            generator=generator,
            backend_name=chosen,
            scorer=scorer,
            data_name=str(data),
            echo=echo,
        )
    finally:
        if isinstance(generator, VllmBackend):
            generator.close()
    if update_card:
        store.update_card(version.ref, {"metrics": result.to_dict()})
    return result, version.ref
