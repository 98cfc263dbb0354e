"""The fine-tuning worker: validates, claims and trains queued jobs, one at a time.

It runs as its own process (`tunegate worker`, which `tunegate serve` starts), so training
never competes with serving inside one interpreter, and a crash of either leaves the other
running. All coordination goes through `JobState` (SQLite): the gateway writes jobs and
cancels, the worker writes progress. Between training steps a Trainer callback writes events
and checkpoint rows and reads the job's status, so a cancel stops the run at its next step.

Crash recovery at start: a job left `running` by a worker process that no longer exists is
queued again and resumed from its last checkpoint (up to `MAX_ATTEMPTS` starts in all, then
failed with the reason), so neither a crash nor a loop of crashes loses a job silently.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import io
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from finetune.distillation import (
    NoStoredCompletionsError,
    build_training_file,
    needs_training_file,
)
from finetune.names import checkpoint_model_name, fine_tuned_model_name, store_name_for
from finetune.state import FileTooLargeError, JobRow, JobState, NotFoundError

if TYPE_CHECKING:
    from tunegate.config import Settings
    from tuner.recipe import Recipe

__all__ = ["MAX_ATTEMPTS", "Worker"]

log = logging.getLogger("tunegate.worker")

MAX_ATTEMPTS = 2  # starts of one job (the first + one resume after a crash)
_RESULTS_MAX_BYTES = 64 * 1024 * 1024
_VALIDATE_EVERY_S = 5.0  # how often a running job pauses to validate newly created jobs
# tuner.train's log keys -> OpenAI's names in metrics events and checkpoint metrics.
_TRAIN_METRICS = {"loss": "train_loss", "mean_token_accuracy": "train_mean_token_accuracy"}
_VALID_METRICS = {
    "eval_loss": "valid_loss",
    "eval_mean_token_accuracy": "valid_mean_token_accuracy",
}


class _Stopped(Exception):
    """The worker was asked to stop while a job ran; the job goes back to the queue."""


def _alive(worker: str | None) -> bool:
    """Whether the worker process `host:pid` still runs (unknown hosts count as alive)."""
    if not worker:
        return False
    host, _, pid_text = worker.rpartition(":")
    if host != socket.gethostname():
        return True  # another machine's worker: not ours to judge
    try:
        pid = int(pid_text)
        os.kill(pid, 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    # A recycled pid belongs to some other program: check that it is a tunegate worker.
    with contextlib.suppress(OSError):
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        return b"worker" in cmdline
    return True


class Worker:
    """Runs the jobs of one tunegate home."""

    def __init__(self, settings: Settings, echo: Callable[[str], None] | None = None) -> None:
        self.settings = settings
        self.config = settings.finetune
        self.state = JobState(settings.home)
        self.id = f"{socket.gethostname()}:{os.getpid()}"
        self.stop_requested = threading.Event()
        self.echo = echo or log.info
        self._tokenizers: dict[str, Any] = {}

    # ------------------------------------------------------------------ the loop

    def recover(self) -> None:
        """Requeue (or fail) jobs whose worker died while running them."""
        for job in self.state.running_jobs():
            if job.worker == self.id or _alive(job.worker):
                continue
            if job.attempts < MAX_ATTEMPTS:
                self.state.transition(
                    job.id,
                    "running",
                    "queued",
                    f"The worker running this job ({job.worker}) stopped before it finished; "
                    "the job is queued again and resumes from its last checkpoint",
                    level="warn",
                )
            else:
                self.state.transition(
                    job.id,
                    "running",
                    "failed",
                    "Fine-tuning job failed: its worker stopped during every attempt",
                    level="error",
                    error={
                        "code": "worker_died",
                        "message": f"the worker process stopped while running this job "
                        f"{job.attempts} time(s) (last: {job.worker}); no model was "
                        "published. See the worker's log; create a new job to retry.",
                        "param": None,
                    },
                )

    def run_once(self) -> bool:
        """Validate pending jobs, then run the oldest queued one; False when there was none."""
        self.validate_pending()
        job = self.state.claim(self.id)
        if job is None:
            return False
        self.run(job)
        return True

    def warm_up(self) -> None:
        """Import the training stack now, while idle: under load that is 10-20 s which the
        first job would otherwise spend between `queued` and its first step."""
        import peft  # noqa: F401
        import transformers  # noqa: F401

        import tuner.pipeline
        import tuner.train  # noqa: F401

    def serve_forever(self) -> None:
        self.recover()
        self.warm_up()
        self.echo(f"worker {self.id} waiting for jobs in {self.state.path}")
        while not self.stop_requested.is_set():
            try:
                busy = self.run_once()
            except Exception:
                # A broken job is failed inside run(); this is the state file itself (locked,
                # disk full): keep the worker alive and try again.
                log.exception("the worker loop failed; retrying")
                busy = False
            if not busy:
                self.stop_requested.wait(self.config.poll_s)

    # ------------------------------------------------------------------ validation

    def _tokenizer(self, base_id: str) -> tuple[Any, int]:
        from transformers import AutoTokenizer

        from tuner.train import ensure_base

        base = ensure_base(self.settings.models_dir, base_id)
        if base_id not in self._tokenizers:
            self._tokenizers[base_id] = AutoTokenizer.from_pretrained(base.path)
        context = int(base.hf_config().get("max_position_embeddings") or 0)
        limit = self.settings.tuner.max_length
        return self._tokenizers[base_id], min(limit, context) if context else limit

    def validate_pending(self) -> None:
        for pending in self.state.pending_validation():
            self.validate(pending)

    def validate(self, job: JobRow) -> bool:
        """`validating_files` -> `queued`, or `failed` with every line-level reason."""
        from tuner.data import validate_file

        if needs_training_file(job):
            try:
                built, summary = build_training_file(self.settings, self.state, job)
            except (NoStoredCompletionsError, FileTooLargeError) as exc:
                code = (
                    "no_stored_completions"
                    if isinstance(exc, NoStoredCompletionsError)
                    else "invalid_training_file"
                )
                return self._fail(job, "validating_files", code, str(exc), "method.distillation")
            self.state.add_event(job.id, summary)
            job = dataclasses.replace(job, training_file=built.id)
        self.state.add_event(job.id, f"Validating training file: {job.training_file}")
        try:
            tokenizer, limit = self._tokenizer(job.model)
        except Exception as exc:
            return self._fail(job, "validating_files", "invalid_model", str(exc), "model")
        for param, file_id in (
            ("training_file", job.training_file),
            ("validation_file", job.validation_file),
        ):
            if file_id is None:
                continue
            try:
                self.state.get_file(file_id, job.owner)
                report = validate_file(self.state.file_path(file_id), tokenizer, limit)
            except NotFoundError:
                return self._fail(
                    job, "validating_files", "invalid_file", f"{file_id} was deleted", param
                )
            except (ValueError, OSError) as exc:
                return self._fail(job, "validating_files", f"invalid_{param}", str(exc), param)
            if report.errors:
                shown = "; ".join(str(p) for p in report.errors[:20])
                more = len(report.errors) - 20
                message = (
                    f"The job failed due to an invalid {param.replace('_', ' ')} {file_id}: "
                    f"{len(report.errors)} error(s): {shown}"
                    + (f"; and {more} more" if more > 0 else "")
                )
                return self._fail(job, "validating_files", f"invalid_{param}", message, param)
            for warning in report.warnings:
                self.state.add_event(job.id, f"{param}: {warning}", level="warn")
        return self.state.transition(
            job.id, "validating_files", "queued", "Files validated, moving job to queued state"
        )

    def _fail(self, job: JobRow, status: Any, code: str, message: str, param: str | None) -> bool:
        self.state.transition(
            job.id,
            status,
            "failed",
            f"Fine-tuning job failed: {message}",
            level="error",
            error={"code": code, "message": message, "param": param},
        )
        return False

    # ------------------------------------------------------------------ training

    def recipe_for(self, job: JobRow, work: Path) -> Recipe:
        from tuner.recipe import Recipe

        hp = job.hyperparameters
        train_file = self.state.copy_file_to(job.training_file, work / "train.jsonl")
        valid_file = (
            self.state.copy_file_to(job.validation_file, work / "valid.jsonl")
            if job.validation_file
            else None
        )
        name = store_name_for(job.id)
        assert name is not None  # job ids always map
        rank = self.config.lora_rank
        return Recipe(
            name=name,
            method="lora",
            base=job.model,
            train_file=str(train_file),
            valid_file=str(valid_file) if valid_file else None,
            max_length=self.settings.tuner.max_length,
            seed=job.seed,
            epochs=float(hp["n_epochs"]),
            max_steps=self.config.max_steps,
            batch_size=int(hp["batch_size"]),
            lr=self.config.base_learning_rate * float(hp["learning_rate_multiplier"]),
            lora_rank=rank,
            lora_alpha=2 * rank,
            logging_steps=1,
            save_steps=self.config.save_steps,
            eval_valid=valid_file is not None,
            evaluate=False,
            publish=False,
        )

    def run(self, job: JobRow) -> None:
        """Train a claimed job to a published adapter, honouring cancel and stop."""
        from tuner.train import train

        try:
            work = self.settings.home / "finetune" / job.id
            recipe = self.recipe_for(job, work)
            resume = Path(job.run_dir) if job.run_dir and Path(job.run_dir).is_dir() else None
            if resume is not None:
                self.state.add_event(job.id, f"Resuming from the last checkpoint in {resume}")
            ft_name = fine_tuned_model_name(job.model, self.config.organization, job.suffix, job.id)
            callback = _progress_callback(self, job, ft_name)
            run = train(
                recipe, self.settings.home, resume=resume, echo=log.info, callbacks=[callback]
            )
            if self.stop_requested.is_set() and self.state.status(job.id) == "running":
                raise _Stopped
            if self.state.status(job.id) != "running":
                self.echo(f"{job.id}: cancelled; nothing published")
                return
            self._publish(job, run, ft_name)
        except _Stopped:
            self.state.transition(
                job.id,
                "running",
                "queued",
                "The worker stopped; the job is queued again and resumes from its last checkpoint",
                level="warn",
                attempts=max(job.attempts - 1, 0),
            )
        except Exception as exc:
            log.exception("job %s failed", job.id)
            self._fail(job, "running", "training_failed", f"{type(exc).__name__}: {exc}", None)

    def _publish(self, job: JobRow, run: Any, ft_name: str) -> None:
        from adapters_store.catalog import Store
        from tuner.pipeline import build_card

        card = build_card(run, None)
        card.update(
            {
                "fine_tuned_model": ft_name,
                "fine_tuning_job": job.id,
                # The key that created the job: an auth layer can let it use its own result.
                "owner": job.owner,
                "training_file": job.training_file,
                "validation_file": job.validation_file,
                "hyperparameters": job.hyperparameters,
            }
        )
        store = Store.open(self.settings)
        try:
            version = store.publish(
                run.output_dir,
                run.recipe.name,
                kind="lora",
                base=run.base.id,
                card=card,
                # The audit trail names the key that asked for the job (the OS user without).
                actor=job.owner,
            )
        finally:
            store.close()
        self.state.add_event(job.id, f"New fine-tuned model created: {ft_name}")
        results = self.state.add_file(
            io.BytesIO(_metrics_csv(run.run_dir / "metrics.jsonl")),
            "step_metrics.csv",
            "fine-tune-results",
            job.owner,
            _RESULTS_MAX_BYTES,
        )
        if self.state.transition(
            job.id,
            "running",
            "succeeded",
            "The job has successfully completed",
            fine_tuned_model=ft_name,
            store_ref=version.ref,
            trained_tokens=run.train_tokens,
            result_files=[results.id],
        ):
            self.echo(f"{job.id}: succeeded, served as {ft_name} ({version.ref})")


def _metrics_csv(metrics: Path) -> bytes:
    """OpenAI's step_metrics.csv columns, from the run's metrics.jsonl."""
    out = io.StringIO()
    writer = csv.writer(out)
    columns = {  # CSV column <- metrics.jsonl key (tuner.train's log names)
        "step": "step",
        "train_loss": "loss",
        "valid_loss": "eval_loss",
        "train_mean_token_accuracy": "mean_token_accuracy",
        "valid_mean_token_accuracy": "eval_mean_token_accuracy",
        "learning_rate": "learning_rate",
        "epoch": "epoch",
        "elapsed_s": "elapsed_s",
    }
    writer.writerow(columns)
    rows = [json.loads(x) for x in metrics.read_text().splitlines()] if metrics.exists() else []
    for r in rows:
        if "loss" in r or "eval_loss" in r:
            writer.writerow([r.get(key, "") for key in columns.values()])
    return out.getvalue().encode()


def _progress_callback(worker: Worker, job: JobRow, ft_name: str) -> Any:
    """A TrainerCallback: events from logs, checkpoint rows from saves, cancel/stop checks."""
    from transformers import TrainerCallback

    jobs = worker.state

    class _Progress(TrainerCallback):  # type: ignore[misc]
        def __init__(self) -> None:
            self.last: dict[str, float] = {}
            self.validated_at = time.monotonic()

        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            # The run folder, so that a restarted worker resumes this run.
            jobs.set_columns(job.id, run_dir=str(Path(args.output_dir).parent))

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            # Jobs created during a long run learn about a bad file without waiting for it.
            if time.monotonic() - self.validated_at > _VALIDATE_EVERY_S:
                worker.validate_pending()
                self.validated_at = time.monotonic()
            if worker.stop_requested.is_set():
                control.should_save = True  # resume from exactly here
                control.should_training_stop = True
            elif jobs.status(job.id) != "running":
                control.should_training_stop = True

        def on_log(
            self, args: Any, state: Any, control: Any, logs: Any = None, **kwargs: Any
        ) -> None:
            if not logs:
                return
            step, total = int(state.global_step), int(state.max_steps)
            data: dict[str, Any] = {"step": step, "total_steps": total}
            # OpenAI's metrics event: step, train/valid loss and mean token accuracy.
            if "loss" in logs:
                split, names = "training", _TRAIN_METRICS
            elif "eval_loss" in logs:
                split, names = "validation", _VALID_METRICS
            else:
                return
            values = {name: float(logs[key]) for key, name in names.items() if key in logs}
            data.update(values)
            self.last.update(values)
            loss, accuracy = names.values()
            message = f"Step {step}/{total}: {split} loss={values[loss]:.4f}" + (
                f", token accuracy={values[accuracy]:.4f}" if accuracy in values else ""
            )
            jobs.add_event(job.id, message, data=data, type_="metrics")

        def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            step = int(state.global_step)
            path = Path(args.output_dir) / f"checkpoint-{step}"
            metrics: dict[str, Any] = {"step": float(step), **self.last}
            jobs.add_checkpoint(
                job.id, step, metrics, checkpoint_model_name(ft_name, step), str(path)
            )

    return _Progress()
