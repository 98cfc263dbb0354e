"""Routing requests over N remote vLLM OpenAI-server replicas with adapter affinity.

`ReplicaRouter` (policy.py) places each request: consistent hashing with bounded loads keeps
an adapter on its home replicas and spills to the next replica of the ring when they are full
or down; `AdapterSlots` (slots.py) predicts which adapters each replica holds, so the caller
knows when to load or unload one. Pure bookkeeping, no I/O.
"""

from gateway.replicas.policy import NoHealthyReplicaError, ReplicaRouter, ReplicaState, Route
from gateway.replicas.slots import AdapterSlots, SlotChange

__all__ = [
    "AdapterSlots",
    "NoHealthyReplicaError",
    "ReplicaRouter",
    "ReplicaState",
    "Route",
    "SlotChange",
]
