"""A real vLLM engine gives the same greedy tokens with the fast LoRA plugin on and off.

Two engine processes on the default model, side by side (the plugin is switched by its
environment variable, as vLLM loads it in its own worker processes). Each serves three
batches with two PEFT adapters whose lora_B is random and nonzero, several prompt lengths,
prefill and decode:

- "base": the base model alone (the reference for base requests),
- "one": every prompt through adapter a0 and through the base model, interleaved; the second
  of the engine's two LoRA slots is still empty,
- "full": every prompt through a0, a1 and the base model; both slots are now taken.

The engines run in float32. In bf16 the logits themselves are bf16 (one rounding step is
0.125 at their size here), two candidates often tie within a step, and any change in
summation order can swap them: measured here, a first token won by 0.125 nats came out
differently for the same request in two batch compositions. The ops' bf16 arithmetic is
compared with vLLM's in tests/unit/test_fast_lora_ops.py instead.

With an empty last slot both op sets must agree on every token. With all slots taken vLLM's
own CPU ops serve base requests with the LAST slot's adapter (they index `weights[-1]` for
"no adapter"; vllm-project/vllm#48421), which the plugin does not reproduce.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from adapters_store.bases import BaseModel

pytestmark = [pytest.mark.engine, pytest.mark.slow]

ACTIVE = "tunegate fast LoRA ops active"
PROMPTS = [
    "The capital of France is",
    "Write a haiku about the sea.",
    "List three prime numbers and explain why each one is prime, briefly.",
    "Hi",
    "My internet has been dropping every evening since Tuesday and restarting the router "
    "did not help. What should I check next?",
]

# Runs in a fresh interpreter: vLLM spawns its engine there, so it needs the main guard.
ENGINE_SCRIPT = textwrap.dedent(
    """
    import json, sys
    from vllm import LLM, SamplingParams
    from vllm.lora.request import LoRARequest

    if __name__ == "__main__":
        model, adapters, prompts, out = sys.argv[1], *map(json.loads, sys.argv[2:4]), sys.argv[4]
        llm = LLM(model, dtype="float32", max_model_len=512, enable_lora=True, max_loras=2,
                  max_lora_rank=8, seed=0, enable_prefix_caching=False, enforce_eager=True)
        tok = llm.get_tokenizer()
        texts = [tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False,
                                         add_generation_prompt=True) for p in prompts]
        a0, a1 = (LoRARequest(f"a{i}", i + 1, path) for i, path in enumerate(adapters))
        params = SamplingParams(max_tokens=24, temperature=0.0)
        result = {}
        for phase, loras in (("base", [None]), ("one", [a0, None]), ("full", [a0, a1, None])):
            batch = [(t, lora) for t in texts for lora in loras]
            outs = llm.generate([t for t, _ in batch], params,
                                lora_request=[lora for _, lora in batch], use_tqdm=False)
            tokens = result.setdefault(phase, {})
            for (t, lora), o in zip(batch, outs):
                key = "base" if lora is None else lora.lora_name
                tokens.setdefault(key, []).append(list(o.outputs[0].token_ids))
        with open(out, "w") as f:
            json.dump(result, f)
    """
)


def _peft_adapter(base: BaseModel, folder: Path, seed: int) -> str:
    """A real PEFT adapter (r=8, all linear layers) whose lora_B is random, not zero."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base.path, dtype=torch.bfloat16)
    peft_model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules="all-linear"))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=gen) * 0.02)
    peft_model.save_pretrained(str(folder))
    return str(folder)


Run = tuple[subprocess.Popen[str], Path]  # an engine script running, and where it writes


def _start(model: Path, adapters: list[str], switch: str, tmp: Path) -> Run:
    """Start ENGINE_SCRIPT with the plugin switched on ("1") or off ("0")."""
    script, out = tmp / "engine.py", tmp / f"tokens-{switch}.json"
    script.write_text(ENGINE_SCRIPT)
    env = {**os.environ, "TUNEGATE_GATEWAY_FAST_LORA": switch}
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    # vLLM's stock ops are slow enough on a busy CPU to hit its default 300 s step timeout.
    env.setdefault("VLLM_EXECUTE_MODEL_TIMEOUT_SECONDS", "1800")
    args = [sys.executable, str(script), str(model), json.dumps(adapters), json.dumps(PROMPTS)]
    # Its own session, so that a timeout also ends the engine processes vLLM spawned.
    proc = subprocess.Popen(
        [*args, str(out)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    return proc, out


def _finish(run: Run) -> tuple[Any, str]:
    """Wait for a run started by _start: its tokens and its log."""
    proc, out = run
    try:
        log, _ = proc.communicate(timeout=1800)
    finally:
        # Whatever is left in the session is vLLM's engine, orphaned: end it for good.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert proc.returncode == 0, log[-4000:]
    return json.loads(out.read_text()), log


@pytest.fixture(scope="module")
def runs(default_model: BaseModel) -> Iterator[dict[str, Any]]:
    """Tokens (and logs) of one engine with the plugin on and one with it off."""
    # Not pytest's tmp_path: the engines run for minutes, and another pytest session
    # started meanwhile prunes older basetemp folders, adapters included.
    with tempfile.TemporaryDirectory(prefix="fast-lora-engine-") as name:
        tmp = Path(name)
        adapters = [_peft_adapter(default_model, tmp / f"adapter{i}", seed=i) for i in range(2)]
        # Both at once: an engine's start is mostly one busy core (imports, profiling runs),
        # so on two cores the pair takes little longer than one.
        started = [_start(default_model.path, adapters, switch, tmp) for switch in ("1", "0")]
        try:
            (fast, fast_log), (stock, stock_log) = (_finish(run) for run in started)
        finally:
            for proc, _ in started:
                if proc.returncode is None:  # the second run, when the first failed
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
        yield {"fast": fast, "stock": stock, "fast_log": fast_log, "stock_log": stock_log}


@pytest.mark.timeout(4000)
def test_plugin_switch_reaches_the_engine_processes(runs: dict[str, Any]) -> None:
    assert ACTIVE in runs["fast_log"], "the plugin did not activate in the engine"
    assert ACTIVE not in runs["stock_log"], "the switch did not turn the plugin off"


@pytest.mark.timeout(4000)
def test_greedy_outputs_identical_with_plugin_on_and_off(runs: dict[str, Any]) -> None:
    fast, stock = runs["fast"], runs["stock"]
    # The adapters must really change the output, or equality proves nothing.
    changed = sum(a != b for a, b in zip(stock["one"]["a0"], stock["base"]["base"], strict=True))
    assert changed >= len(PROMPTS) // 2, "the adapter barely changes the output"
    assert stock["full"]["a0"] != stock["full"]["a1"]

    assert fast["base"] == stock["base"]
    assert fast["one"] == stock["one"], "with an empty last slot every request must agree"
    for key in ("a0", "a1"):
        assert fast["full"][key] == stock["full"][key], f"{key}: tokens differ with the plugin"


@pytest.mark.timeout(4000)
def test_base_requests_stay_base_when_every_slot_is_taken(runs: dict[str, Any]) -> None:
    fast, stock = runs["fast"], runs["stock"]
    assert fast["full"]["base"] == fast["base"]["base"]
    # vLLM 0.32's own CPU ops give a base request the last slot's adapter (a1) instead; the
    # plugin is pinned to that version, so this documents what it fixes there.
    assert stock["full"]["base"] == stock["full"]["a1"] != stock["base"]["base"]
