"""Routing requests over N remote vLLM OpenAI-server replicas with adapter affinity.

`ReplicaRouter` (policy.py) places each request: consistent hashing with bounded loads keeps
an adapter on its home replicas and spills to the next replica of the ring when they are full
or down; `AdapterSlots` (slots.py) predicts which adapters each replica holds, so the caller
knows when to load or unload one; both are pure bookkeeping, no I/O. `ReplicaFleet`
(fleet.py) does the I/O over `ReplicaClient`s (client.py): it forwards OpenAI requests to
the chosen replica, loads and unloads adapters through vLLM's runtime LoRA endpoints, and
polls every replica's `/health`.
"""

from gateway.replicas.client import AdapterRefusedError, ReplicaClient, ReplicaDownError
from gateway.replicas.fleet import AdapterTarget, ReplicaFleet, ReplicaStats
from gateway.replicas.policy import NoHealthyReplicaError, ReplicaRouter, ReplicaState, Route
from gateway.replicas.slots import AdapterSlots, SlotChange

__all__ = [
    "AdapterRefusedError",
    "AdapterSlots",
    "AdapterTarget",
    "NoHealthyReplicaError",
    "ReplicaClient",
    "ReplicaDownError",
    "ReplicaFleet",
    "ReplicaRouter",
    "ReplicaState",
    "ReplicaStats",
    "Route",
    "SlotChange",
]
