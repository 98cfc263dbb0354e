"""Settings of remote vLLM replicas (`gateway.replicas.*`, `TUNEGATE_GATEWAY_REPLICAS_*`).

With `urls` set, the gateway serves its base model from these vLLM OpenAI servers instead of
an in-process engine. Start each replica the same way:

    VLLM_ALLOW_RUNTIME_LORA_UPDATING=True python -m vllm.entrypoints.openai.api_server \\
        --model PATH --served-model-name BASE_ID --enable-lora \\
        --max-loras N --max-cpu-loras M --max-lora-rank R --port P

with BASE_ID the gateway's base model id and N, M, R equal to `gateway.engine.max_loras`,
`max_cpu_loras` and `max_lora_rank` (the router's slot bookkeeping assumes them). Replicas
load adapters from the store's blob folders by path, so those must be visible to every
replica under the same path (one machine, or a shared filesystem). Several CPU replicas on one
host each need their own cores (`VLLM_CPU_OMP_THREADS_BIND=0`, `=1`, ...): vLLM's "auto"
binds the engine threads of every replica to the same core, so they share one. A replica
with fewer `--max-loras` slots than the adapters in use defers the requests of the adapters
that find no slot, so a mixed workload runs one adapter after another.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import httpx

__all__ = ["ReplicasConfig"]


@dataclass
class ReplicasConfig:
    """Remote vLLM OpenAI-server replicas of the base model (`gateway.replicas.*`)."""

    urls: list[str] = field(
        default_factory=list,
        metadata={
            "doc": "Base URLs (http://host:port) of vLLM OpenAI servers of the base model; "
            "empty: the gateway runs its own engine."
        },
    )
    load_factor: float = field(
        default=1.25,
        metadata={
            "doc": "1 + eps of consistent hashing with bounded loads: a replica holding more "
            "than load_factor x the mean requests in flight passes new ones to the next."
        },
    )
    home_count: int = field(
        default=1, metadata={"doc": "Replicas each adapter lives on while they have room."}
    )
    health_interval_s: float = field(
        default=1.0,
        metadata={"doc": "How often every replica's /health is polled (a dead one is out then)."},
    )
    connect_timeout_s: float = field(
        default=2.0, metadata={"doc": "Connect timeout to a replica; past it, it is down."}
    )

    def __post_init__(self) -> None:
        if len(set(self.urls)) != len(self.urls):
            raise ValueError(f"gateway.replicas.urls lists a replica twice: {self.urls}")
        for url in self.urls:
            parsed = httpx.URL(url)
            if parsed.scheme not in ("http", "https") or not parsed.host:
                raise ValueError(f"gateway.replicas.urls: {url!r} is not http(s)://host[:port]")
        if not self.load_factor > 1.0:
            raise ValueError("gateway.replicas.load_factor must be > 1")
        if self.home_count < 1:
            raise ValueError("gateway.replicas.home_count must be >= 1")
        for name in ("health_interval_s", "connect_timeout_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"gateway.replicas.{name} must be > 0")
