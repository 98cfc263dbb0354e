"""Distillation pieces: the KD loss against its formula, distill recipes, decode timing."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.unit.test_tuner_student import _llama
from tuner.data import IGNORE_INDEX
from tuner.distill import kd_loss, measure_decode
from tuner.recipe import RecipeError, build_recipe, load_recipe
from tuner.student import StudentError
from tuner.tasks import TASKS

RECIPES = Path(__file__).resolve().parents[2] / "recipes"


def _direct(
    s: torch.Tensor, t: torch.Tensor, y: torch.Tensor, temp: float, kw: float, cw: float
) -> tuple[float, float, float]:
    """The loss written out position by position, in float64, from the definitions."""
    kl = ce = 0.0
    n = 0
    for b in range(y.size(0)):
        for p in range(y.size(1)):
            if int(y[b, p]) == IGNORE_INDEX:
                continue
            n += 1
            zs = [float(v) for v in s[b, p]]
            zt = [float(v) for v in t[b, p]]
            ps = [math.exp(v / temp) for v in zs]
            pt = [math.exp(v / temp) for v in zt]
            ps = [v / sum(ps) for v in ps]
            pt = [v / sum(pt) for v in pt]
            kl += sum(a * (math.log(a) - math.log(c)) for a, c in zip(pt, ps, strict=True))
            ce += -(zs[int(y[b, p])] - math.log(sum(math.exp(v) for v in zs)))
    return (kw * temp * temp * kl + cw * ce) / n, kl / n, ce / n


@pytest.mark.parametrize(
    ("temp", "kw", "cw"), [(1.0, 0.5, 0.5), (2.0, 0.7, 0.3), (4.0, 1.0, 0.0), (0.5, 0.0, 1.0)]
)
def test_kd_loss_matches_the_formula(temp: float, kw: float, cw: float) -> None:
    torch.manual_seed(1)
    s = torch.randn(2, 3, 11) * 3
    t = torch.randn(2, 3, 11) * 3
    y = torch.tensor([[4, IGNORE_INDEX, 0], [IGNORE_INDEX, 10, 7]])
    loss, parts = kd_loss(s, t, y, temperature=temp, kd_weight=kw, ce_weight=cw)
    want, kl, ce = _direct(s, t, y, temp, kw, cw)
    assert float(loss) == pytest.approx(want, rel=1e-5)
    assert parts["kl"] == pytest.approx(kl, rel=1e-5)
    assert parts["ce"] == pytest.approx(ce, rel=1e-5)


def test_kd_mask_moves_the_kl_to_its_own_positions() -> None:
    # kd_positions=all: KL on every real position (averaged over them), CE on labels only.
    torch.manual_seed(5)
    s, t = torch.randn(2, 4, 9) * 2, torch.randn(2, 4, 9) * 2
    y = torch.tensor([[IGNORE_INDEX, IGNORE_INDEX, 3, IGNORE_INDEX], [IGNORE_INDEX, 8, 1, 2]])
    kd_mask = torch.tensor([[True, True, True, False], [True, True, True, True]])
    loss, parts = kd_loss(s, t, y, temperature=2.0, kd_weight=0.6, ce_weight=0.4, kd_mask=kd_mask)
    every = torch.where(kd_mask, 0, IGNORE_INDEX)  # stands for "all masked positions count"
    _, kl, _ = _direct(s, t, every, 2.0, 1.0, 0.0)
    _, _, ce = _direct(s, t, y, 2.0, 0.0, 1.0)
    assert parts["kl"] == pytest.approx(kl, rel=1e-5)
    assert parts["ce"] == pytest.approx(ce, rel=1e-5)
    assert float(loss) == pytest.approx(0.6 * 4.0 * kl + 0.4 * ce, rel=1e-5)


def test_ignored_positions_do_not_count() -> None:
    torch.manual_seed(2)
    s, t = torch.randn(1, 4, 5), torch.randn(1, 4, 5)
    y = torch.tensor([[1, IGNORE_INDEX, 3, IGNORE_INDEX]])
    loss, _ = kd_loss(s, t, y, temperature=2.0, kd_weight=0.5, ce_weight=0.5)
    s2 = s.clone()
    s2[0, 1] += 100.0  # garbage where nothing is trained
    t2 = t.clone()
    t2[0, 3] -= 50.0
    loss2, _ = kd_loss(s2, t2, y, temperature=2.0, kd_weight=0.5, ce_weight=0.5)
    assert float(loss2) == pytest.approx(float(loss))


def test_num_items_replaces_the_position_count() -> None:
    # Under gradient accumulation the Trainer passes the count over the whole step.
    torch.manual_seed(3)
    s, t = torch.randn(2, 2, 6), torch.randn(2, 2, 6)
    y = torch.tensor([[0, 1], [2, IGNORE_INDEX]])
    mean, _ = kd_loss(s, t, y, temperature=1.0, kd_weight=1.0, ce_weight=1.0)
    over_ten, _ = kd_loss(
        s, t, y, temperature=1.0, kd_weight=1.0, ce_weight=1.0, num_items=torch.tensor(10)
    )
    assert float(over_ten) == pytest.approx(float(mean) * 3 / 10, rel=1e-6)


def test_identical_models_leave_only_the_label_ce_and_no_teacher_gradient() -> None:
    torch.manual_seed(4)
    s = torch.randn(1, 3, 8, requires_grad=True)
    t = s.detach().clone().requires_grad_(True)
    y = torch.tensor([[1, 2, 3]])
    loss, parts = kd_loss(s, t.detach(), y, temperature=3.0, kd_weight=0.25, ce_weight=0.75)
    assert parts["kl"] == pytest.approx(0.0, abs=1e-6)
    assert float(loss.detach()) == pytest.approx(0.75 * parts["ce"], rel=1e-6)
    loss.backward()
    assert s.grad is not None and float(s.grad.abs().sum()) > 0
    assert t.grad is None


def test_kl_gradient_pulls_the_student_towards_the_teacher() -> None:
    s = torch.zeros(1, 1, 3, requires_grad=True)
    t = torch.tensor([[[5.0, 0.0, 0.0]]])
    y = torch.tensor([[0]])
    loss, _ = kd_loss(s, t, y, temperature=2.0, kd_weight=1.0, ce_weight=0.0)
    loss.backward()
    assert s.grad is not None and float(s.grad[0, 0, 0]) < 0 < float(s.grad[0, 0, 1])


def test_vocabulary_mismatch_is_refused() -> None:
    y = torch.tensor([[0]])
    with pytest.raises(StudentError, match="student vocabulary 5 != teacher vocabulary 6"):
        kd_loss(
            torch.randn(1, 1, 5),
            torch.randn(1, 1, 6),
            y,
            temperature=1.0,
            kd_weight=1.0,
            ce_weight=1.0,
        )


# -- recipes -------------------------------------------------------------------------------


@pytest.mark.parametrize("task", sorted(TASKS))
def test_every_task_ships_a_distill_recipe_of_its_lora_teacher(task: str) -> None:
    recipe = load_recipe(RECIPES / task / "distill.yaml")
    lora = load_recipe(RECIPES / task / "lora.yaml")
    assert recipe.method == "distill" and recipe.task == task
    assert recipe.teacher == lora.name
    assert recipe.name != lora.name  # a model cannot be published under an adapter's name
    assert recipe.kd_weight + recipe.ce_weight > 0


def _distill(**values: Any) -> dict[str, Any]:
    return {"name": "s", "method": "distill", "task": "telecom-routing", "teacher": "t", **values}


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"teacher": None}, "teacher: required"),
        ({"teacher": "Bad Name"}, "teacher: invalid name"),
        ({"teacher": "t@0"}, "teacher: invalid reference"),
        ({"student_layers": "half"}, "student_layers: .*expected all, every:K"),
        ({"student_layers": "every:0"}, "student_layers: .*must be >= 1"),
        ({"student_base": "../etc"}, "student_base: not a base model id"),
        ({"kd_temperature": 0.0}, "kd_temperature: must be in"),
        ({"kd_weight": -1.0}, "kd_weight: must be >= 0"),
        ({"kd_weight": 0.0, "ce_weight": 0.0}, "kd_weight: kd_weight \\+ ce_weight must be > 0"),
        ({"speed_tokens": 1}, "speed_tokens: must be in 2..4096"),
    ],
)
def test_bad_distill_values_are_refused(values: dict[str, Any], message: str) -> None:
    with pytest.raises(RecipeError, match=message):
        build_recipe(_distill(**values))


def test_distill_overrides_are_typed() -> None:
    recipe = load_recipe(
        RECIPES / "telecom-routing" / "distill.yaml",
        ["teacher=telecom@prod", "student_layers=0,5,29", "kd_temperature=4", "ce_weight=0"],
    )
    assert recipe.teacher == "telecom@prod" and recipe.student_layers == "0,5,29"
    assert recipe.kd_temperature == 4.0 and recipe.ce_weight == 0.0
    assert (
        load_recipe(RECIPES / "telecom-routing" / "distill.yaml", ["kd_positions=all"]).kd_positions
        == "all"
    )
    with pytest.raises(RecipeError, match="kd_positions must be one of"):
        load_recipe(RECIPES / "telecom-routing" / "distill.yaml", ["kd_positions=some"])


# -- decode timing -------------------------------------------------------------------------


def test_measure_decode_times_every_model_on_the_same_prompts() -> None:
    prompts = [[1, 2, 3, 4, 5], [1, 2, 3, 9]]
    result = measure_decode({"a": _llama(3), "b": _llama(1)}, prompts, 6, pad_token_id=0, repeats=1)
    assert set(result) == {"a", "b"}
    for row in result.values():
        # Values only: which run was faster depends on the host's load, not on the code.
        assert row["decode_tokens_per_s"] > 0 and row["total_s"] > 0 and row["prefill_s"] > 0


# -- teacher cache -------------------------------------------------------------------------


class _Counting(torch.nn.Module):
    """A teacher that counts the rows it runs (the shared prefix pass counts 1)."""

    def __init__(self, model: Any) -> None:
        super().__init__()
        self.model = model
        self.rows = 0

    def forward(self, **kwargs: Any) -> Any:
        self.rows += int(kwargs["input_ids"].size(0))
        return self.model(**kwargs)


def _rows() -> list[tuple[list[int], list[int]]]:
    """Three examples sharing a 10-token prompt; labels on each one's answer tokens."""
    prompt = list(range(3, 13))
    out = []
    for own, answer in (([20, 21], [30, 31, 2]), ([22], [32, 2]), ([23, 24, 25], [33, 34, 35, 2])):
        ids = prompt + own + answer
        out.append((ids, [IGNORE_INDEX] * (len(ids) - len(answer)) + answer))
    return out


def _batch(rows: list[tuple[list[int], list[int]]]) -> tuple[torch.Tensor, ...]:
    from tuner.prefix import pad_batch

    b = pad_batch(rows, pad_id=0)
    targets = b["labels"][:, 1:]
    keep = (targets != IGNORE_INDEX).any(dim=0).nonzero().flatten()
    return b["input_ids"], b["attention_mask"], keep, targets


def test_teacher_cache_serves_each_example_once_whatever_its_batch() -> None:
    from tuner.distill import TeacherCache
    from tuner.prefix import prefix_forward

    teacher = _Counting(_llama(2))
    rows = _rows()
    cache = TeacherCache()
    for order in ([0, 1, 2], [2, 0], [1], [2, 1, 0]):  # epochs reshuffle; padding changes
        ids, mask, keep, targets = _batch([rows[i] for i in order])
        got = cache.logits(teacher, ids, mask, keep, targets != IGNORE_INDEX)
        with torch.no_grad():
            want = prefix_forward(teacher.model, ids, mask, keep)
        trained = targets[:, keep] != IGNORE_INDEX
        assert got.shape == want.shape
        torch.testing.assert_close(got[trained], want[trained], rtol=1e-4, atol=1e-4)
        assert float(got[~trained].abs().sum()) == 0.0  # never read by kd_loss
    # First batch: the 3 rows plus the shared-prefix pass; every later row came from the cache.
    assert teacher.rows == 4
    assert (cache.misses, cache.hits) == (3, 6)
    assert cache.bytes == 9 * 64 * 4  # 9 trained positions x 64 logits x fp32


def test_teacher_cache_past_its_budget_computes_on_the_fly() -> None:
    from tuner.distill import TeacherCache

    teacher = _Counting(_llama(2))
    cache = TeacherCache(max_bytes=0)
    ids, mask, keep, targets = _batch(_rows())
    first = cache.logits(teacher, ids, mask, keep, targets != IGNORE_INDEX)
    again = cache.logits(teacher, ids, mask, keep, targets != IGNORE_INDEX)
    torch.testing.assert_close(first, again)
    assert (cache.misses, cache.hits, cache.bytes) == (6, 0, 0)


def test_teacher_cache_with_kd_positions_all_reads_past_the_training_sets_shared_prefix() -> None:
    from tuner.distill import TeacherCache, kd_read, kd_start
    from tuner.prefix import prefix_forward

    rows = _rows()
    # A fourth example sharing one more token with the first: a batch of those two shares an
    # 11-token prefix, the training set 10; the KL must start at 10 in every batch.
    ids4 = [*rows[0][0][:11], 26, 36, 2]
    rows.append((ids4, [IGNORE_INDEX] * 12 + [36, 2]))
    start = kd_start([{"input_ids": i, "labels": lab} for i, lab in rows], pad_id=0)
    assert start == 10
    teacher = _Counting(_llama(2))
    cache = TeacherCache()
    for order in ([0, 3], [1, 2, 0], [3, 1], [2, 3, 0, 1]):
        ids, mask, _, targets = _batch([rows[i] for i in order])
        read = kd_read(mask, targets, "all", start)
        assert not read[:, :start].any()
        assert bool((read.sum(dim=1) == mask.sum(dim=1) - 1 - start).all())
        keep = read.any(dim=0).nonzero().flatten()
        got = cache.logits(teacher, ids, mask, keep, read)
        with torch.no_grad():
            want = prefix_forward(teacher.model, ids, mask, keep)
        at = read[:, keep]
        torch.testing.assert_close(got[at], want[at], rtol=1e-4, atol=1e-4)
        assert float(got[~at].abs().sum()) == 0.0
    assert (cache.misses, cache.hits) == (4, 7)
    cache.clear()
    assert cache.bytes == 0


@pytest.mark.parametrize("tied", [True, False])
@pytest.mark.parametrize("freeze", [True, False])
def test_freeze_embeddings_leaves_only_the_vocabulary_ends_untrained(
    tied: bool, freeze: bool
) -> None:
    from adapters_store.bases import BaseModel
    from tuner.backends import ModelSpec
    from tuner.distill import Teacher, build_student

    base = BaseModel("b", Path("."), "test", "LlamaForCausalLM", {})
    teacher = Teacher(
        "t@1", "model", base, ModelSpec(path=Path(".")), _llama(4, tie_word_embeddings=tied)
    )
    recipe = load_recipe(
        RECIPES / "telecom-routing" / "distill.yaml",
        ["student_layers=0,3", f"freeze_embeddings={str(freeze).lower()}"],
    )
    student, _, keep = build_student(recipe, teacher, Path("."), torch.float32)
    assert keep == [0, 3]
    ends = {id(student.get_input_embeddings().weight), id(student.get_output_embeddings().weight)}
    assert len(ends) == (1 if tied else 2)
    for p in student.parameters():
        assert p.requires_grad == (not freeze or id(p) not in ends)
    assert any(p.requires_grad for p in student.parameters())
