"""Which adapters one vLLM replica holds, as the router predicts it.

A vLLM OpenAI server started with `--enable-lora` keeps adapters at two levels:

- registered adapters (`POST /v1/load_lora_adapter`), whose weights sit in an LRU cache of
  `max_cpu_loras` entries; an adapter that is not there must be read from disk first, which
  is the expensive "adapter load" the router tries to avoid;
- `max_loras` GPU slots: the adapters a batch can mix. Activating a cached adapter into a
  slot is a device copy, cheap next to a load from disk, but not free.

`AdapterSlots` mirrors both levels with LRU order so the router knows, before it forwards a
request, whether the replica must load the adapter and which cold adapters to unload to keep
the registered set within `max_cpu_loras`. Adapters with requests in flight are never chosen
for unloading: vLLM would fail those requests.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

__all__ = ["AdapterSlots", "SlotChange"]


@dataclass(frozen=True)
class SlotChange:
    """What serving one request through an adapter does to a replica's slots."""

    load: bool
    """The replica does not hold the adapter: load it before forwarding the request."""
    unload: tuple[str, ...]
    """Cold adapters to unload (least recently used first) to stay within `max_cpu_loras`."""
    slot_hit: bool
    """The adapter was already in one of the replica's `max_loras` GPU slots."""


class AdapterSlots:
    """LRU bookkeeping of the adapters one replica holds (registered and in GPU slots)."""

    def __init__(self, max_loras: int, max_cpu_loras: int) -> None:
        if max_loras < 1:
            raise ValueError(f"max_loras must be >= 1, got {max_loras}")
        if max_cpu_loras < max_loras:
            # vLLM refuses the same combination at start-up.
            raise ValueError(f"max_cpu_loras ({max_cpu_loras}) must be >= max_loras ({max_loras})")
        self.max_loras = max_loras
        self.max_cpu_loras = max_cpu_loras
        # Oldest first; values unused, OrderedDict gives O(1) move-to-end and pop-oldest.
        self._held: OrderedDict[str, None] = OrderedDict()
        self._gpu: OrderedDict[str, None] = OrderedDict()
        self._in_use: dict[str, int] = {}

    @property
    def held(self) -> list[str]:
        """Registered adapters, least recently used first."""
        return list(self._held)

    @property
    def in_gpu(self) -> list[str]:
        """Adapters predicted in the GPU slots, least recently used first."""
        return list(self._gpu)

    def holds(self, adapter: str) -> bool:
        return adapter in self._held

    def in_use(self, adapter: str) -> int:
        """Requests in flight through `adapter` on this replica."""
        return self._in_use.get(adapter, 0)

    def use(self, adapter: str) -> SlotChange:
        """Record a request through `adapter` starting; say what the replica must do first."""
        load = adapter not in self._held
        slot_hit = adapter in self._gpu
        self._held[adapter] = None
        self._held.move_to_end(adapter)
        self._gpu[adapter] = None
        self._gpu.move_to_end(adapter)
        if len(self._gpu) > self.max_loras:
            self._gpu.popitem(last=False)
        self._in_use[adapter] = self._in_use.get(adapter, 0) + 1
        return SlotChange(load=load, unload=self._evict(), slot_hit=slot_hit)

    def done(self, adapter: str) -> None:
        """Record a request through `adapter` finishing (successfully or not)."""
        count = self._in_use.get(adapter, 0)
        if count <= 0:
            raise ValueError(f"no request in flight through {adapter!r} to finish")
        if count == 1:
            del self._in_use[adapter]
        else:
            self._in_use[adapter] = count - 1

    def forget(self, adapter: str) -> None:
        """The replica does not hold `adapter` after all (its load failed, or it restarted)."""
        self._held.pop(adapter, None)
        self._gpu.pop(adapter, None)

    def clear(self) -> None:
        """The replica lost everything it held (it restarted or was replaced)."""
        self._held.clear()
        self._gpu.clear()

    def _evict(self) -> tuple[str, ...]:
        excess = len(self._held) - self.max_cpu_loras
        if excess <= 0:
            return ()
        # Every adapter in use may be pinned: then the set stays over capacity until one
        # finishes, which vLLM tolerates (its CPU cache is itself an LRU that reloads).
        victims = [a for a in self._held if a not in self._in_use][:excess]
        for adapter in victims:
            self.forget(adapter)
        return tuple(victims)
