"""Distillation: a shallower student learns a teacher's answers (`tunegate distill`).

The teacher is a store reference: a LoRA adapter, merged into its base with PEFT so that its
logits cost one plain forward, or a `model` artifact. The student is, by default, the
teacher's own (merged) weights with a subset of its layers kept (`tuner/student.py`), so it
starts from what the teacher learned; `student_base` cuts it from a registered base with the
same tokenizer instead. The loss, on the positions the labels train (the assistant's tokens):

    kd_weight * T^2 * KL(softmax(teacher / T) || softmax(student / T)) + ce_weight * CE(labels)

(Hinton et al. 2015: T^2 keeps the KL's gradients on the CE's scale whatever T is); with
`kd_positions=all` the KL covers every token after the prompt prefix all training examples
share (the customer's words too), not only the answer. Teacher logits are computed at those
positions only, with the prompt prefix the batch shares run once (`tuner/prefix.py`), and
kept in memory per example (`TeacherCache`), so from the second epoch on a step costs the
student's part only: telecom-routing, 11-layer student, `all`, frozen embeddings, 1 thread,
4.2 s a step in epoch 1 and 2.7 s after (load 2-2.5). The cache holds 400 x ~27 positions x
the 49k-token vocabulary in fp32 there (1.9 GiB); on disk it would add re-use across runs only.

Training is `tunegate tune`'s machinery (`tuner/train.py`: Trainer, checkpoints, resume,
metrics JSONL, loss curve) with a Trainer whose `compute_loss` is the mixed loss above.
"""

from __future__ import annotations

import copy
import json
import os
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from adapters_store.bases import BaseModel
from tuner.backends import ModelSpec
from tuner.config import TunerConfig
from tuner.data import IGNORE_INDEX, dataset_sha256, render_prompt
from tuner.evaluate import EvalResult, load_cases, with_system_prompt
from tuner.hardware import configure_threads, resolve_precision
from tuner.pipeline import _store, build_card, evaluate_run, trained_system_prompt
from tuner.prefix import common_prefix_len, greedy_generate, pad_batch, prefix_forward
from tuner.recipe import Recipe
from tuner.student import (
    StudentError,
    decoder_layers,
    drop_layers,
    save_model,
    select_layers,
    tokenizer_fingerprint,
)
from tuner.train import (
    DataFiles,
    RunResult,
    TrainingError,
    _build_trainer,
    _last_checkpoint,
    _plot_loss,
    ensure_base,
    load_datasets,
    open_run_dir,
    prepare_data,
)

__all__ = [
    "DistillOutcome",
    "Teacher",
    "TeacherCache",
    "build_student",
    "distill",
    "kd_loss",
    "kd_read",
    "kd_start",
    "load_teacher",
    "measure_decode",
]

Printer = Callable[[str], None]


@dataclass
class Teacher:
    ref: str  # pinned `name@version`
    kind: str  # lora or model
    base: BaseModel  # the registered base it derives from
    spec: ModelSpec  # how evaluation loads it
    model: Any  # merged, eval mode, no gradients


@dataclass(frozen=True)
class DistillOutcome:
    run: RunResult
    teacher: str
    layers: list[int]  # teacher layers the student kept
    evaluation: EvalResult | None
    speed: dict[str, Any] | None
    reference: str | None  # the published `name@version`


def kd_loss(
    student_logits: Any,
    teacher_logits: Any,
    targets: Any,
    *,
    temperature: float,
    kd_weight: float,
    ce_weight: float,
    num_items: Any = None,
    kd_mask: Any = None,
) -> tuple[Any, dict[str, float]]:
    """The mixed loss over the positions where `targets` is not IGNORE_INDEX.

    Logits are [batch, positions, vocab], targets [batch, positions] (already aligned: the
    logits at a position predict its target). Sums are divided by `num_items` (the Trainer's
    count over a whole accumulated batch) or by the number of trained positions. With
    `kd_mask` ([batch, positions] booleans) the KL covers those positions instead, averaged
    over them. Returns the loss and its two parts (per position, for the log).
    """
    import torch.nn.functional as F

    if student_logits.size(-1) != teacher_logits.size(-1):
        raise StudentError(
            f"student vocabulary {student_logits.size(-1)} != "
            f"teacher vocabulary {teacher_logits.size(-1)}"
        )
    mask = targets != IGNORE_INDEX
    count = num_items if num_items is not None else mask.sum().clamp(min=1)
    ce = F.cross_entropy(student_logits[mask].float(), targets[mask], reduction="sum") / count
    kl_at = mask if kd_mask is None else kd_mask
    kl_count = count if kd_mask is None else kd_mask.sum().clamp(min=1)
    t = temperature
    kl = (
        F.kl_div(
            F.log_softmax(student_logits[kl_at].float() / t, dim=-1),
            F.log_softmax(teacher_logits[kl_at].float() / t, dim=-1),
            log_target=True,
            reduction="sum",
        )
        / kl_count
    )
    loss = kd_weight * t * t * kl + ce_weight * ce
    return loss, {"kl": float(kl.detach()), "ce": float(ce.detach())}


class TeacherCache:
    """The teacher's logits at each example's distilled positions, computed once per example.

    Keyed by the example's real token ids and the positions the KL reads, so the same
    example in another batch (the sampler reshuffles every epoch) finds its rows whatever its
    padding and neighbours. That needs positions that depend on the example alone: its label
    tokens (`kd_positions=labels`), or every token after the prompt prefix the whole training
    set shares (`all`), never the prefix of a batch. Past `max_bytes` new examples are
    computed on the fly, never evicted nor refused.
    """

    def __init__(self, max_bytes: int = 4 << 30) -> None:
        self.max_bytes = max_bytes
        self.bytes = 0
        self.hits = 0
        self.misses = 0
        self._rows: dict[bytes, Any] = {}

    def logits(self, teacher: Any, ids: Any, mask: Any, keep: Any, read: Any) -> Any:
        """Teacher logits [batch, len(keep), vocab] at absolute positions `keep`, right where
        `read` ([batch, positions] booleans: the KL reads position p, which predicts token
        p+1) is true and zeros elsewhere, which `kd_loss` never reads."""
        import torch

        wanted = read[:, keep]
        keys = []
        for i, n in enumerate(mask.sum(dim=1).tolist()):
            own = read[i, : n - 1]  # the row's own positions, not the batch's
            keys.append(ids[i, :n].numpy().tobytes() + own.numpy().tobytes())
        missing = [i for i, k in enumerate(keys) if k not in self._rows]
        self.misses += len(missing)
        self.hits += len(keys) - len(missing)
        if missing:
            with torch.no_grad():
                fresh = prefix_forward(teacher, ids[missing], mask[missing], keep)
            like = fresh[0, 0]
        else:
            like = self._rows[keys[0]][0]
        out = torch.zeros((ids.size(0), keep.numel(), like.numel()), dtype=like.dtype)
        for j, i in enumerate(missing):
            row = fresh[j, wanted[i]]
            out[i, wanted[i]] = row
            if keys[i] not in self._rows and self.bytes + row.nbytes <= self.max_bytes:
                self._rows[keys[i]] = row
                self.bytes += row.nbytes
        for i in sorted(set(range(len(keys))) - set(missing)):
            out[i, wanted[i]] = self._rows[keys[i]]
        return out

    def clear(self) -> None:
        """Free the cached rows (the counts stay, for the run's log)."""
        self._rows.clear()
        self.bytes = 0


def kd_start(rows: Sequence[Mapping[str, Sequence[int]]], pad_id: int) -> int:
    """The first position `kd_positions=all` distils: the end of the prompt prefix every
    training example shares (the system prompt and the user turn's header), so the KL of an
    example never depends on the batch it lands in."""
    batch = pad_batch([(r["input_ids"], r["labels"]) for r in rows], pad_id)
    return common_prefix_len(batch["input_ids"], batch["attention_mask"])


def kd_read(mask: Any, targets: Any, kd_positions: str, start: int) -> Any:
    """[batch, positions] booleans: where the KL reads (position p predicts token p+1)."""
    import torch

    if kd_positions == "all":
        after = torch.arange(targets.size(1)) >= start
        return mask[:, 1:].bool() & after
    return targets != IGNORE_INDEX


def load_teacher(store: Any, ref: str, models_dir: Path, dtype: Any) -> Teacher:
    """The teacher as one plain model: a LoRA adapter is merged into its base."""
    from transformers import AutoModelForCausalLM

    version = store.resolve(ref)
    base = ensure_base(models_dir, version.base)
    if version.kind == "lora":
        from peft import PeftModel

        model = AutoModelForCausalLM.from_pretrained(base.path, dtype=dtype)
        model = PeftModel.from_pretrained(model, version.path).merge_and_unload()
        spec = ModelSpec(path=base.path, adapter=version.path, name=version.name, uid=version.uid)
    else:
        model = AutoModelForCausalLM.from_pretrained(version.path, dtype=dtype)
        spec = ModelSpec(path=version.path, name=version.name, uid=version.uid)
    model.eval()
    model.requires_grad_(False)
    return Teacher(version.ref, version.kind, base, spec, model)


def build_student(
    recipe: Recipe, teacher: Teacher, models_dir: Path, dtype: Any
) -> tuple[Any, BaseModel, list[int]]:
    """(student model, the base it derives from, the source layers it kept)."""
    if recipe.student_base is None:
        source = copy.deepcopy(teacher.model)
        base = teacher.base
    else:
        from transformers import AutoModelForCausalLM

        base = ensure_base(models_dir, recipe.student_base)
        if tokenizer_fingerprint(base.path) != tokenizer_fingerprint(teacher.base.path):
            raise StudentError(
                f"student_base {base.id!r} does not share the tokenizer of the teacher's base "
                f"{teacher.base.id!r}: their token distributions cannot be compared"
            )
        source = AutoModelForCausalLM.from_pretrained(base.path, dtype=dtype)
    keep = select_layers(recipe.student_layers, len(decoder_layers(source)))
    student = drop_layers(source.to(dtype), keep)
    student.requires_grad_(True)
    if recipe.freeze_embeddings:
        # Tied or not, both ends of the vocabulary stay the source's.
        student.get_input_embeddings().weight.requires_grad_(False)
        student.get_output_embeddings().weight.requires_grad_(False)
    student.train()
    return student, base, keep


def _distill_trainer_class(teacher: Any, recipe: Recipe, cache: TeacherCache, start: int) -> Any:
    import torch
    from transformers import Trainer

    class DistillTrainer(Trainer):  # type: ignore[misc]
        """Label CE mixed with the teacher's KL; logs both parts beside the loss."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.tokens = 0
            self._parts: list[dict[str, float]] = []

        def compute_loss(  # type: ignore[override]
            self,
            model: Any,
            inputs: dict[str, torch.Tensor],
            return_outputs: bool = False,
            num_items_in_batch: Any = None,
        ) -> Any:
            ids, mask = inputs["input_ids"], inputs["attention_mask"]
            # Position p predicts token p+1: CE where that token is trained, KL where
            # `kd_read` says (the same positions, or all after the shared prompt prefix).
            targets = inputs["labels"][:, 1:]
            read = kd_read(mask, targets, recipe.kd_positions, start)
            keep = (read | (targets != IGNORE_INDEX)).any(dim=0).nonzero().flatten()
            logits = prefix_forward(model, ids, mask, keep)
            teacher_logits = cache.logits(teacher, ids, mask, keep, read)
            kd_mask = read[:, keep] if recipe.kd_positions == "all" else None
            loss, parts = kd_loss(
                logits,
                teacher_logits,
                targets[:, keep],
                temperature=recipe.kd_temperature,
                kd_weight=recipe.kd_weight,
                ce_weight=recipe.ce_weight,
                num_items=num_items_in_batch,
                kd_mask=kd_mask,
            )
            if model.training:
                self.tokens += int(mask.sum())
                self._parts.append(parts)
            return (loss, {"logits": logits}) if return_outputs else loss

        def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
            if "loss" in logs and self._parts:
                for key in ("kl", "ce"):
                    logs[key] = statistics.fmean(p[key] for p in self._parts)
                self._parts = []
            super().log(logs, *args, **kwargs)

    return DistillTrainer


def measure_decode(
    models: Mapping[str, Any],
    prompts: Sequence[Sequence[int]],
    new_tokens: int,
    pad_token_id: int,
    repeats: int = 3,
) -> dict[str, dict[str, float]]:
    """Decode tokens/s of each model on the same prompts (one batch, greedy, transformers).

    Each model generates 1 and `new_tokens` tokens (never stopping early); the difference is
    the decode time of `new_tokens - 1` steps, prefill excluded. Models take turns within each
    repeat so that load from other processes falls on all of them alike, and the fastest of
    the repeats counts (the least disturbed, as `timeit` does).
    """
    import torch

    best: dict[str, dict[int, float]] = {name: {} for name in models}
    with torch.inference_mode():
        for _ in range(repeats):
            for name, model in models.items():
                for n in (1, new_tokens):
                    started = time.perf_counter()
                    # eos -1 never matches: every row decodes exactly n tokens.
                    greedy_generate(model, prompts, n, eos_token_id=-1, pad_token_id=pad_token_id)
                    seconds = time.perf_counter() - started
                    best[name][n] = min(best[name].get(n, seconds), seconds)
    out = {}
    for name, times in best.items():
        decode_s = max(times[new_tokens] - times[1], 1e-9)
        out[name] = {
            "decode_tokens_per_s": round(len(prompts) * (new_tokens - 1) / decode_s, 1),
            "prefill_s": round(times[1], 3),
            "total_s": round(times[new_tokens], 3),
        }
    return out


def _speed(
    recipe: Recipe, teacher: Teacher, student: Any, tokenizer: Any, data: DataFiles
) -> dict[str, Any] | None:
    """Teacher vs student decode speed on the first test prompts, as the student is served."""
    if recipe.speed_prompts == 0 or data.test is None:
        return None
    cases = load_cases(data.test, recipe.speed_prompts)
    system = trained_system_prompt(data.train)
    prompts = [
        tokenizer(
            render_prompt(tokenizer, with_system_prompt(c.messages, system)),
            add_special_tokens=False,
        )["input_ids"]
        for c in cases
    ]
    student.eval()
    load_before = os.getloadavg()
    result = measure_decode(
        {"teacher": teacher.model, "student": student},
        prompts,
        recipe.speed_tokens,
        pad_token_id=tokenizer.pad_token_id or 0,
    )
    load_after = os.getloadavg()
    ratio = result["student"]["decode_tokens_per_s"] / max(
        result["teacher"]["decode_tokens_per_s"], 1e-9
    )
    return {
        "engine": "transformers greedy decode (tuner.prefix.greedy_generate), "
        f"{next(student.parameters()).dtype}, one batch, merged teacher",
        "prompts": len(prompts),
        "new_tokens": recipe.speed_tokens,
        "teacher": result["teacher"],
        "student": result["student"],
        "decode_speedup": round(ratio, 2),
        "load_avg_1m": [round(load_before[0], 2), round(load_after[0], 2)],
        "cpu_count": os.cpu_count(),
    }


def distill(
    recipe: Recipe,
    home: Path,
    config: TunerConfig,
    store_config: Any | None = None,
    resume: Path | None = None,
    backend: str | None = None,
    echo: Printer = print,
) -> DistillOutcome:
    """Distil `recipe.teacher` into a student; evaluate both; publish the student."""
    import torch

    if recipe.method != "distill" or recipe.teacher is None:
        raise TrainingError(
            f"recipe {recipe.name!r} is method {recipe.method!r}: "
            "`tunegate distill` takes a distill recipe (with a teacher)"
        )
    store = _store(home, store_config)
    teacher_version = store.resolve(recipe.teacher)  # an unknown teacher fails before any work
    teacher_base = ensure_base(home / "models", teacher_version.base)
    if recipe.base != teacher_base.id:
        echo(f"note: base is the teacher's, {teacher_base.id} (the recipe says {recipe.base})")
    data = prepare_data(recipe, home, echo)
    configure_threads(config.threads, echo)
    tokenizer, train_set, valid_set = load_datasets(recipe, teacher_base, data)
    run_dir = open_run_dir(recipe, home, resume, "distilled")
    echo(f"run folder: {run_dir}")
    precision = resolve_precision(recipe.precision)
    # The student trains in fp32 master weights (bf16 autocast where native), as a full
    # fine-tune does; the frozen teacher can run in bf16 where that is fast.
    teacher = load_teacher(
        store,
        teacher_version.ref,
        home / "models",
        torch.bfloat16 if precision == "bf16" else torch.float32,
    )
    student, student_base, keep = build_student(recipe, teacher, home / "models", torch.float32)
    echo(
        f"teacher {teacher.ref} ({teacher.kind}, {len(decoder_layers(teacher.model))} layers); "
        f"student keeps layers {keep} of {student_base.id if recipe.student_base else teacher.ref}"
    )

    cache = TeacherCache()
    trainer, _ = _build_trainer(
        recipe,
        student,
        tokenizer,
        train_set,
        valid_set,
        run_dir,
        trainer_class=_distill_trainer_class(
            teacher.model, recipe, cache, kd_start(train_set, tokenizer.pad_token_id or 0)
        ),
    )
    checkpoint = _last_checkpoint(run_dir / "checkpoints") if resume is not None else None
    if resume is not None and checkpoint is None:
        echo(f"no checkpoint in {run_dir}: starting from the beginning")
    started = time.perf_counter()
    output = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    seconds = time.perf_counter() - started
    _plot_loss(run_dir / "metrics.jsonl", run_dir / "loss.png", recipe.name)
    tokens = trainer.tokens
    if cache.misses:
        echo(
            f"teacher logits: {cache.misses} example rows computed, {cache.hits} from the "
            f"cache ({cache.bytes / 2**20:.0f} MiB)"
        )
    cache.clear()  # up to max_bytes that evaluation and the speed test need more
    loss = float(output.training_loss) if output.training_loss is not None else None
    echo(
        f"distilled {tokens} tokens in {seconds:.1f} s ({output.global_step} steps"
        + (f", final train loss {loss:.4f})" if loss is not None else ")")
    )

    speed = _speed(recipe, teacher, trainer.model, tokenizer, data)
    if speed is not None:
        echo(
            f"decode speed ({speed['engine']}; load {speed['load_avg_1m']}): teacher "
            f"{speed['teacher']['decode_tokens_per_s']} tok/s, student "
            f"{speed['student']['decode_tokens_per_s']} tok/s: {speed['decode_speedup']}x"
        )
    out_dir = run_dir / "model"
    save_model(trainer.model, tokenizer, out_dir)
    del trainer, student
    teacher.model = None  # evaluation loads its own copy; free this one first

    run = RunResult(
        run_dir=run_dir,
        output_dir=out_dir,
        recipe=recipe,
        base=student_base,
        data=data,
        dataset_sha256=dataset_sha256(data.train),
        train_tokens=tokens,
        train_seconds=seconds,
        tokens_per_second=tokens / seconds if seconds > 0 else 0.0,
        final_loss=loss,
    )
    student_spec = ModelSpec(path=out_dir, name=recipe.name)
    evaluation = evaluate_run(run, student_spec, config, backend, echo, {"teacher": teacher.spec})
    distillation = {
        "teacher": teacher.ref,
        "teacher_kind": teacher.kind,
        "student_layers": recipe.student_layers,
        "kept_layers": keep,
        "student_source": recipe.student_base or teacher.ref,
        "kd_temperature": recipe.kd_temperature,
        "kd_weight": recipe.kd_weight,
        "ce_weight": recipe.ce_weight,
        "kd_positions": recipe.kd_positions,
    }
    if evaluation is not None:
        rows = evaluation.conditions
        if "macro_f1" in rows["tuned"] and rows["teacher"]["macro_f1"] > 0:
            kept = rows["tuned"]["macro_f1"] / rows["teacher"]["macro_f1"]
            distillation["macro_f1_kept"] = round(kept, 3)
            echo(f"student keeps {kept:.0%} of the teacher's macro-F1")
    (run_dir / "run.json").write_text(
        json.dumps(
            {
                "recipe": recipe.to_dict(),
                "base": student_base.id,
                "train_file": str(data.train),
                "dataset_sha256": run.dataset_sha256,
                "examples": len(train_set),
                "steps": output.global_step,
                "train_tokens": tokens,
                "train_seconds": round(seconds, 2),
                "train_loss": loss,
                "distillation": distillation,
                "speed": speed,
                "output": str(out_dir),
            },
            indent=2,
        )
        + "\n"
    )

    reference = None
    if recipe.publish:
        card = build_card(run, evaluation)
        card.update(parent=teacher.ref, distillation=distillation, speed=speed)
        version = store.publish(out_dir, recipe.name, kind="model", base=student_base.id, card=card)
        reference = version.ref
        echo(f"published {reference} (model, {len(keep)} layers, parent {teacher.ref})")
    return DistillOutcome(run, teacher.ref, keep, evaluation, speed, reference)
