"""Training a recipe: transformers' Trainer (+ PEFT for LoRA), on the CPU or a GPU.

The run folder (`$TUNEGATE_HOME/runs/<name>-<timestamp>/`) holds `recipe.yaml`,
`checkpoints/` (for `--resume`), `metrics.jsonl` (one line per log event), `loss.png`,
`run.json` (what was trained on, throughput) and the result: `adapter/` (LoRA, a PEFT folder
vLLM loads) or `model/` (full fine-tune, a normal HF folder in bf16).

Speed on a CPU comes from not doing work that teaches nothing: only the positions whose next
token is trained (the label and its `<|im_end|>`) go through the 49k-wide LM head
(`logits_to_keep`), batches group similar lengths, and LoRA keeps the frozen base in bf16.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from adapters_store.bases import BaseModel, BaseRegistry
from tuner.data import IGNORE_INDEX, dataset_sha256, encode_conversation, load_conversations
from tuner.distributed import (
    from_main_process,
    is_main_process,
    main_process_echo,
    main_process_first,
    mean_over,
    sum_over,
)
from tuner.hardware import resolve_precision
from tuner.prefix import pad_batch, prefix_forward
from tuner.recipe import Recipe
from tuner.tasks import get_task
from tuner.token_accuracy import TokenAccuracy

__all__ = [
    "DataFiles",
    "RunResult",
    "TrainingError",
    "ensure_base",
    "load_datasets",
    "open_run_dir",
    "prepare_data",
    "train",
]

Printer = Callable[[str], None]


class TrainingError(RuntimeError):
    """A run that cannot start or finish; the message says why."""


@dataclass(frozen=True)
class DataFiles:
    train: Path
    valid: Path | None
    test: Path | None


@dataclass(frozen=True)
class RunResult:
    run_dir: Path
    output_dir: Path  # adapter/ or model/
    recipe: Recipe
    base: BaseModel
    data: DataFiles
    dataset_sha256: str
    train_tokens: int
    train_seconds: float
    tokens_per_second: float
    final_loss: float | None


def ensure_base(models_dir: Path, base_id: str) -> BaseModel:
    """The registered base; the two bases tunegate can build itself are built when absent."""
    from tuner.base_models import DEFAULT_BASE_ID, TINY_BASE_ID, ensure_default, ensure_tiny

    registry = BaseRegistry(models_dir)
    if base_id == DEFAULT_BASE_ID:
        return ensure_default(models_dir, verify=False)
    if base_id == TINY_BASE_ID:
        return ensure_tiny(models_dir)
    return registry.get(base_id)


def prepare_data(recipe: Recipe, home: Path, echo: Printer = print) -> DataFiles:
    """Resolve the recipe's data files; generate a task's demo data where they are absent."""
    # Generated data lives in a folder named by the generator's inputs (and revision), so a
    # recipe with other sizes, another seed or a changed generator never silently reuses
    # files made for a different one.
    default_dir = (
        home
        / "data"
        / recipe.task
        / (
            f"seed{recipe.data_seed}-{recipe.n_train}-{recipe.n_valid}-{recipe.n_test}"
            f"-{get_task(recipe.task).fingerprint}"
        )
        if recipe.task
        else None
    )

    def resolve(value: str | None, split: str) -> Path | None:
        if value is not None:
            return Path(value).expanduser().resolve()
        return default_dir / f"{split}.jsonl" if default_dir else None

    files = DataFiles(
        train=resolve(recipe.train_file, "train"),  # type: ignore[arg-type]
        valid=resolve(recipe.valid_file, "valid"),
        test=resolve(recipe.test_file, "test"),
    )
    wanted = [p for p in (files.train, files.valid, files.test) if p is not None]
    missing = [p for p in wanted if not p.exists()]
    if missing:
        if recipe.task is None:
            raise TrainingError(f"data file not found: {missing[0]}")
        task = get_task(recipe.task)
        sizes = {"train": recipe.n_train, "valid": recipe.n_valid, "test": recipe.n_test}
        for path in missing:
            split = path.stem if path.stem in sizes else None
            if split is None:
                raise TrainingError(f"data file not found: {path} (and not a split name)")
            rows = [task.record(e) for e in task.generate(split, sizes[split], recipe.data_seed)]  # type: ignore[arg-type]
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            tmp.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
            tmp.replace(path)
            echo(f"generated {len(rows)} {recipe.task} examples: {path}")
    return files


def _new_run_dir(runs_dir: Path, name: str) -> Path:
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    run = runs_dir / f"{name}-{stamp}"
    n = 1
    while run.exists():
        n += 1
        run = runs_dir / f"{name}-{stamp}-{n}"
    run.mkdir(parents=True)
    return run


def latest_run(runs_dir: Path, name: str) -> Path:
    runs = sorted(p for p in runs_dir.glob(f"{name}-*") if (p / "recipe.yaml").is_file())
    if not runs:
        raise TrainingError(f"no earlier run of {name!r} under {runs_dir} to resume")
    return runs[-1]


def train(
    recipe: Recipe,
    home: Path,
    resume: Path | None = None,
    echo: Printer = print,
    callbacks: Sequence[Any] = (),
) -> RunResult:
    """Train `recipe`; with `resume`, continue that run folder from its last checkpoint.

    `callbacks` are extra transformers `TrainerCallback`s (the fine-tuning worker's events,
    checkpoint rows and cancel between steps).

    Under `accelerate launch` every process trains; only the main one writes (see
    `tuner.distributed`), and the result describes the whole run in each process.
    """
    import torch

    echo = main_process_echo(echo)
    with main_process_first():
        base = ensure_base(home / "models", recipe.base)
        data = prepare_data(recipe, home, echo)

    # Invalid data is refused here, before a model is loaded, with the validator's messages.
    tokenizer, train_set, valid_set = load_datasets(recipe, base, data)
    run_dir = from_main_process(lambda: open_run_dir(recipe, home, resume, "trained"))
    echo(f"run folder: {run_dir}")

    model = _load_model(recipe, base, torch)
    trainer, counter = _build_trainer(recipe, model, tokenizer, train_set, valid_set, run_dir)
    for callback in callbacks:
        trainer.add_callback(callback)
    checkpoint = _last_checkpoint(run_dir / "checkpoints") if resume is not None else None
    if resume is not None and checkpoint is None:
        echo(f"no checkpoint in {run_dir}: starting from the beginning")
    started = time.perf_counter()
    output = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    seconds = time.perf_counter() - started

    out_dir = run_dir / ("adapter" if recipe.method == "lora" else "model")
    # Under FSDP each process holds a shard: all of them take part in gathering the weights.
    # (Under DDP every process holds them all, and the main one saves its own.)
    state_dict = (
        trainer.accelerator.get_state_dict(trainer.model) if trainer.is_fsdp_enabled else None
    )
    if is_main_process():
        model = trainer.accelerator.unwrap_model(trainer.model)
        _save(recipe, model, tokenizer, out_dir, torch, state_dict)
        _plot_loss(run_dir / "metrics.jsonl", run_dir / "loss.png", recipe.name)

    tokens = sum_over(counter.tokens)
    speed = tokens / seconds if seconds > 0 else 0.0
    # Each process averages the loss of its own share of the batches.
    loss = mean_over(float(output.training_loss)) if output.training_loss is not None else None
    result = RunResult(
        run_dir=run_dir,
        output_dir=out_dir,
        recipe=recipe,
        base=base,
        data=data,
        dataset_sha256=dataset_sha256(data.train),
        train_tokens=tokens,
        train_seconds=seconds,
        tokens_per_second=speed,
        final_loss=loss,
    )
    if is_main_process():
        _write_run_json(result, len(train_set), output.global_step)
    echo(
        f"trained {tokens} tokens in {seconds:.1f} s: {speed:.0f} tokens/s "
        f"({output.global_step} steps, final train loss {loss:.4f})"
        if loss is not None
        else f"trained {tokens} tokens in {seconds:.1f} s: {speed:.0f} tokens/s"
    )
    return result


def _write_run_json(result: RunResult, examples: int, steps: int) -> None:
    (result.run_dir / "run.json").write_text(
        json.dumps(
            {
                "recipe": result.recipe.to_dict(),
                "base": result.base.id,
                "train_file": str(result.data.train),
                "dataset_sha256": result.dataset_sha256,
                "examples": examples,
                "steps": steps,
                "train_tokens": result.train_tokens,
                "train_seconds": round(result.train_seconds, 2),
                "tokens_per_second": round(result.tokens_per_second, 1),
                "train_loss": result.final_loss,
                "output": str(result.output_dir),
            },
            indent=2,
        )
        + "\n"
    )


def load_datasets(
    recipe: Recipe, base: BaseModel, data: DataFiles
) -> tuple[Any, list[dict[str, list[int]]], list[dict[str, list[int]]]]:
    """(tokenizer, encoded train rows, encoded valid rows) for `recipe` on `base`; invalid
    data raises with the validator's messages."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base.path)
    context = int(base.hf_config().get("max_position_embeddings") or recipe.max_length)
    max_length = min(recipe.max_length, context)
    train_rows, _ = load_conversations(data.train, tokenizer, max_length)
    valid_rows = (
        load_conversations(data.valid, tokenizer, max_length)[0]
        if data.valid is not None and recipe.eval_valid
        else []
    )
    return (
        tokenizer,
        [_encode(tokenizer, r) for r in train_rows],
        [_encode(tokenizer, r) for r in valid_rows],
    )


def open_run_dir(recipe: Recipe, home: Path, resume: Path | None, verb: str) -> Path:
    """A new run folder holding `recipe.yaml`, or `resume` when it ran the same recipe."""
    if resume is None:
        run_dir = _new_run_dir(home / "runs", recipe.name)
        (run_dir / "recipe.yaml").write_text(yaml.safe_dump(recipe.to_dict(), sort_keys=False))
        return run_dir
    saved = yaml.safe_load((resume / "recipe.yaml").read_text())
    if saved != recipe.to_dict():
        raise TrainingError(f"{resume} was {verb} with another recipe; cannot resume it")
    return resume


def _encode(tokenizer: Any, record: dict[str, Any]) -> dict[str, list[int]]:
    enc = encode_conversation(tokenizer, record["messages"])
    return {"input_ids": enc.input_ids, "labels": enc.labels}


def _load_model(recipe: Recipe, base: BaseModel, torch: Any) -> Any:
    from transformers import AutoModelForCausalLM

    if recipe.method == "full":
        # fp32 master weights under bf16 autocast: bf16 weights would round small AdamW
        # updates away entirely.
        return AutoModelForCausalLM.from_pretrained(base.path, dtype=torch.float32)
    from peft import LoraConfig, get_peft_model

    # With native bf16 the frozen base stays in bf16 (half the memory traffic); PEFT keeps
    # the adapter in fp32 either way.
    dtype = torch.bfloat16 if resolve_precision(recipe.precision) == "bf16" else torch.float32
    model = AutoModelForCausalLM.from_pretrained(base.path, dtype=dtype)
    layers = int(model.config.num_hidden_layers)
    if recipe.lora_layers > layers:
        raise TrainingError(f"lora_layers={recipe.lora_layers}: {base.id} has {layers} layers")
    # The top layers only: gradients never need to flow below the lowest adapted layer, which
    # on a CPU cuts the backward pass roughly in proportion. vLLM serves such adapters (a
    # module without LoRA weights simply runs plain).
    top = list(range(layers - recipe.lora_layers, layers)) if recipe.lora_layers else None
    config = LoraConfig(
        layers_to_transform=top,
        r=recipe.lora_rank,
        lora_alpha=recipe.lora_alpha,
        lora_dropout=recipe.lora_dropout,
        target_modules=recipe.target_modules,
        bias="none",
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, config)


class _TokenCounter:
    tokens = 0


def _build_trainer(
    recipe: Recipe,
    model: Any,
    tokenizer: Any,
    train_set: list[dict[str, list[int]]],
    valid_set: list[dict[str, list[int]]],
    run_dir: Path,
    trainer_class: Any = None,
) -> tuple[Any, _TokenCounter]:
    """The Trainer for a run; `trainer_class` (a Trainer subclass with its own
    `compute_loss`, e.g. distillation's) replaces the label-CE one."""
    import torch
    import torch.nn.functional as F
    from transformers import Trainer, TrainerCallback, TrainingArguments

    counter = _TokenCounter()
    accuracy = TokenAccuracy()
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    def collate(rows: list[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
        return pad_batch([(r["input_ids"], r["labels"]) for r in rows], pad_id)

    class _Trainer(Trainer):  # type: ignore[misc]
        def compute_loss(  # type: ignore[override]
            self,
            model: Any,
            inputs: dict[str, torch.Tensor],
            return_outputs: bool = False,
            num_items_in_batch: Any = None,
        ) -> Any:
            labels = inputs["labels"]
            # Position p predicts token p+1: keep only positions whose next token is trained.
            targets = labels[:, 1:]
            keep = (targets != IGNORE_INDEX).any(dim=0).nonzero().flatten()
            if self.is_fsdp_enabled:
                # FSDP allows one forward per backward: the shared-prefix pass (two forwards)
                # failed on an H200 under FSDP1 (assert in _use_unsharded_views) and FSDP2
                # (freed parameter storage) with a LoRA model.
                logits = model(
                    input_ids=inputs["input_ids"],
                    attention_mask=inputs["attention_mask"],
                    logits_to_keep=keep,
                ).logits.float()
            else:
                logits = prefix_forward(
                    model, inputs["input_ids"], inputs["attention_mask"], keep
                ).float()
            picked = targets[:, keep]
            accuracy.update(logits, picked, training=model.training)
            loss_sum = F.cross_entropy(
                logits.reshape(-1, logits.size(-1)),
                picked.reshape(-1),
                ignore_index=IGNORE_INDEX,
                reduction="sum",
            )
            if model.training:
                counter.tokens += int(inputs["attention_mask"].sum())
            if num_items_in_batch is not None:
                loss = loss_sum / num_items_in_batch
            else:
                loss = loss_sum / (picked != IGNORE_INDEX).sum().clamp(min=1)
            return (loss, {"logits": logits}) if return_outputs else loss

        def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
            accuracy.add_to(logs)  # train/eval mean token accuracy beside the loss
            super().log(logs, start_time)

    class _MetricsLog(TrainerCallback):  # type: ignore[misc]
        def __init__(self) -> None:
            self.started = time.perf_counter()

        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kw: Any) -> None:
            if not logs or not state.is_world_process_zero:
                return
            row = {"step": state.global_step, "epoch": state.epoch, **logs}
            row["elapsed_s"] = round(time.perf_counter() - self.started, 2)
            with (run_dir / "metrics.jsonl").open("a") as fh:
                fh.write(json.dumps(row) + "\n")

    use_cuda = torch.cuda.is_available()
    args = TrainingArguments(
        output_dir=str(run_dir / "checkpoints"),
        per_device_train_batch_size=recipe.batch_size,
        per_device_eval_batch_size=recipe.batch_size,
        gradient_accumulation_steps=recipe.grad_accum,
        learning_rate=recipe.lr,
        lr_scheduler_type=recipe.lr_scheduler,
        warmup_steps=recipe.warmup,
        weight_decay=recipe.weight_decay,
        num_train_epochs=recipe.epochs,
        max_steps=recipe.max_steps,
        bf16=resolve_precision(recipe.precision) == "bf16",
        use_cpu=not use_cuda,
        seed=recipe.seed,
        logging_steps=recipe.logging_steps,
        logging_first_step=True,
        save_strategy="steps",
        save_steps=recipe.save_steps,
        save_total_limit=2,
        eval_strategy="epoch" if valid_set else "no",
        prediction_loss_only=True,
        train_sampling_strategy="group_by_length" if recipe.group_by_length else "random",
        remove_unused_columns=False,
        # Under DDP every trainable weight takes part in each step (frozen layers below
        # lora_layers have no gradient at all): skip the per-step search for unused ones.
        ddp_find_unused_parameters=False,
        dataloader_num_workers=0,
        report_to="none",
        disable_tqdm=False,
    )
    trainer = (trainer_class or _Trainer)(
        model=model,
        args=args,
        train_dataset=_ListDataset(train_set),
        eval_dataset=_ListDataset(valid_set) if valid_set else None,
        data_collator=collate,
        callbacks=[_MetricsLog()],
    )
    return trainer, counter


class _ListDataset:
    """A map-style dataset over encoded rows; `lengths` feeds group_by_length directly."""

    def __init__(self, rows: list[dict[str, list[int]]]) -> None:
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, list[int]]:
        return self.rows[i]


def _last_checkpoint(folder: Path) -> Path | None:
    if not folder.is_dir():
        return None
    from transformers.trainer_utils import get_last_checkpoint

    found = get_last_checkpoint(str(folder))
    return Path(found) if found else None


def _save(
    recipe: Recipe,
    model: Any,
    tokenizer: Any,
    out_dir: Path,
    torch: Any,
    state_dict: dict[str, Any] | None = None,
) -> None:
    """Write the result; `state_dict` is the gathered full weights of a multi-process run."""
    if recipe.method == "lora":
        # safetensors, explicit target modules, bias none, no modules_to_save: what vLLM and
        # the store accept.
        model.save_pretrained(out_dir, state_dict=state_dict)
    elif state_dict is None:
        model.to(torch.bfloat16).save_pretrained(out_dir)
        tokenizer.save_pretrained(out_dir)
    else:
        weights = {
            k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in state_dict.items()
        }
        # A gathered (FSDP) state dict holds tied weights (lm_head = embed_tokens) as separate
        # tensors, so save_pretrained cannot see the tie by storage and would save both.
        for target, source in (getattr(model, "all_tied_weights_keys", None) or {}).items():
            if source in weights:
                weights.pop(target, None)
        model.save_pretrained(out_dir, state_dict=weights)
        tokenizer.save_pretrained(out_dir)


def _plot_loss(metrics: Path, png: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = (
        [json.loads(line) for line in metrics.read_text().splitlines()] if metrics.exists() else []
    )
    train = [(r["step"], r["loss"]) for r in rows if "loss" in r and math.isfinite(r["loss"])]
    valid = [(r["step"], r["eval_loss"]) for r in rows if "eval_loss" in r]
    fig, ax = plt.subplots(figsize=(7, 4))
    if train:
        ax.plot(*zip(*train, strict=True), label="train loss")
    if valid:
        ax.plot(*zip(*valid, strict=True), "o-", label="validation loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (assistant tokens)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if train or valid:
        ax.legend()
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)
