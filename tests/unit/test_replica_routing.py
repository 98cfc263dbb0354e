"""The replica router's policy: affinity, bounded loads, spill, determinism, minimal moves."""

from __future__ import annotations

import math

import pytest

from gateway.replicas import AdapterSlots, NoHealthyReplicaError, ReplicaRouter, Route

ADAPTERS = [f"adapter-{i}" for i in range(400)]


def _router(n: int = 8, **kwargs: object) -> ReplicaRouter:
    kwargs.setdefault("max_loras", 2)
    kwargs.setdefault("max_cpu_loras", 4)
    return ReplicaRouter([f"r{i}" for i in range(n)], **kwargs)  # type: ignore[arg-type]


# -- slots ---------------------------------------------------------------------------------


def test_slots_load_once_then_hit_and_unload_least_recently_used() -> None:
    slots = AdapterSlots(max_loras=1, max_cpu_loras=2)
    first = slots.use("a")
    assert (first.load, first.unload, first.slot_hit) == (True, (), False)
    slots.done("a")
    again = slots.use("a")
    assert (again.load, again.unload, again.slot_hit) == (False, (), True)
    slots.done("a")
    slots.use("b")  # b takes the one GPU slot from a
    slots.done("b")
    assert slots.in_gpu == ["b"]
    back = slots.use("a")
    assert (back.load, back.slot_hit) == (False, False)  # cached, not in a slot
    slots.done("a")
    third = slots.use("c")  # over max_cpu_loras: b is least recently used
    assert third.load and third.unload == ("b",)
    assert slots.held == ["a", "c"]


def test_slots_never_unload_an_adapter_in_use() -> None:
    slots = AdapterSlots(max_loras=1, max_cpu_loras=1)
    slots.use("a")  # still in flight
    change = slots.use("b")
    assert change.unload == ()  # a is pinned; the set stays over capacity for now
    assert slots.held == ["a", "b"]
    slots.done("a")
    slots.done("b")
    assert slots.use("c").unload == ("a", "b")


@pytest.mark.parametrize(
    ("max_loras", "max_cpu_loras", "message"),
    [(0, 4, "max_loras"), (4, 2, "max_cpu_loras")],
)
def test_slots_refuse_bad_sizes(max_loras: int, max_cpu_loras: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        AdapterSlots(max_loras=max_loras, max_cpu_loras=max_cpu_loras)


def test_slots_refuse_finishing_what_never_started() -> None:
    with pytest.raises(ValueError, match="no request in flight"):
        AdapterSlots(1, 1).done("a")


# -- routing -------------------------------------------------------------------------------


def test_idle_adapter_goes_to_its_home_every_time() -> None:
    router = _router()
    for adapter in ADAPTERS[:50]:
        for _ in range(3):
            route = router.route(adapter)
            assert route.replica == router.homes(adapter)[0]
            assert not route.spilled
            router.finish(route)


def test_homes_spread_over_all_replicas() -> None:
    router = _router(8)
    per_replica: dict[str, int] = {}
    for adapter in ADAPTERS:
        home = router.homes(adapter)[0]
        per_replica[home] = per_replica.get(home, 0) + 1
    assert set(per_replica) == set(router.replicas)
    mean = len(ADAPTERS) / 8
    assert max(per_replica.values()) < 2 * mean and min(per_replica.values()) > mean / 2


def test_first_use_loads_then_reuse_does_not() -> None:
    router = _router()
    first = router.route("adapter-1")
    router.finish(first)
    second = router.route("adapter-1")
    assert first.slots is not None and first.slots.load
    assert second.slots is not None and not second.slots.load and second.slots.slot_hit


@pytest.mark.parametrize(("n", "load_factor"), [(4, 1.25), (8, 1.25), (8, 1.5), (16, 1.1)])
def test_bounded_load_holds_even_when_one_adapter_is_hot(n: int, load_factor: float) -> None:
    router = _router(n, load_factor=load_factor)
    open_routes = []
    for i in range(20 * n):
        # One hot adapter takes half the traffic; nothing finishes, so load only grows.
        adapter = "hot" if i % 2 == 0 else ADAPTERS[i % len(ADAPTERS)]
        open_routes.append(router.route(adapter))
        loads = [s.in_flight for s in router.replicas.values()]
        total = sum(loads)
        # The paper's bound: no bin above ceil((1 + eps) * m / n) after m placements.
        assert max(loads) <= math.ceil(load_factor * total / n)
    hot = {r.replica for r in open_routes if r.adapter == "hot"}
    assert 1 < len(hot) < n  # it spilled, but onto the next replicas of its walk only
    walk = router.walk("hot")
    assert hot == set(walk[: len(hot)])


def test_spill_when_home_is_unhealthy_and_return_when_it_recovers() -> None:
    router = _router()
    home, second = router.walk("adapter-7")[:2]
    router.set_healthy(home, False)
    route = router.route("adapter-7")
    assert route.replica == second and route.spilled
    router.finish(route)
    router.set_healthy(home, True)
    back = router.route("adapter-7")
    assert back.replica == home and not back.spilled
    assert back.slots is not None and back.slots.load  # it may have restarted: reload


def test_home_count_two_uses_both_homes_and_prefers_the_one_holding_it() -> None:
    router = _router(8, home_count=2)
    homes = router.homes("adapter-3")
    first = router.route("adapter-3")  # still in flight
    second = router.route("adapter-3")
    # Both homes idle-ish: the first goes to the first home, the second to the other home
    # (less loaded), never outside the homes.
    assert {first.replica, second.replica} == set(homes)
    router.finish(first)
    router.finish(second)
    third = router.route("adapter-3")
    assert third.replica in homes and third.slots is not None and not third.slots.load


def test_base_model_requests_go_to_the_least_loaded_healthy_replica() -> None:
    router = _router(3)
    busy = router.route("adapter-1").replica
    router.set_healthy(next(n for n in router.replicas if n != busy), False)
    route = router.route(None)
    idle = [n for n, s in router.replicas.items() if s.healthy and n != busy]
    assert idle and route.replica == idle[0] and route.slots is None
    # Now both healthy replicas hold one request: the tie goes to the smaller name.
    assert router.route(None).replica == min(busy, idle[0])


def test_no_healthy_replica_is_a_clear_error() -> None:
    router = _router(2)
    for name in router.replicas:
        router.set_healthy(name, False)
    with pytest.raises(NoHealthyReplicaError):
        router.route("adapter-1")
    with pytest.raises(NoHealthyReplicaError):
        router.route(None)
    with pytest.raises(NoHealthyReplicaError):
        ReplicaRouter([], max_loras=1, max_cpu_loras=1).route("a")


def test_routing_is_deterministic_whatever_the_replica_order() -> None:
    names = [f"http://10.0.0.{i}:8000" for i in range(12)]
    a = ReplicaRouter(names, max_loras=2, max_cpu_loras=4)
    b = ReplicaRouter(reversed(names), max_loras=2, max_cpu_loras=4)
    sequence = [ADAPTERS[(i * 7) % 97] for i in range(300)]
    placed_a = [a.route(x).replica for x in sequence]
    placed_b = [b.route(x).replica for x in sequence]
    assert placed_a == placed_b


@pytest.mark.parametrize("n", [4, 8, 16])
def test_adding_a_replica_moves_only_its_share(n: int) -> None:
    router = _router(n)
    before = {a: router.homes(a)[0] for a in ADAPTERS}
    router.add_replica("new")
    after = {a: router.homes(a)[0] for a in ADAPTERS}
    moved = [a for a in ADAPTERS if before[a] != after[a]]
    # Every moved adapter moved to the new replica, none between old ones...
    assert moved and all(after[a] == "new" for a in moved)
    # ...and about 1/(n+1) of them moved (virtual nodes keep the share near its mean).
    assert len(moved) <= 2 * len(ADAPTERS) / (n + 1)


@pytest.mark.parametrize("n", [4, 8, 16])
def test_removing_a_replica_moves_only_its_adapters(n: int) -> None:
    router = _router(n)
    before = {a: router.homes(a)[0] for a in ADAPTERS}
    router.remove_replica("r1")
    after = {a: router.homes(a)[0] for a in ADAPTERS}
    moved = {a for a in ADAPTERS if before[a] != after[a]}
    assert moved == {a for a in ADAPTERS if before[a] == "r1"}
    # Each goes to the next replica of its old walk.
    assert all(after[a] != "r1" for a in moved)


def test_finish_after_the_replica_was_removed_is_harmless() -> None:
    router = _router(3)
    route = router.route("adapter-1")
    router.remove_replica(route.replica)
    router.finish(route)
    assert route.replica not in router.replicas


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"load_factor": 1.0}, "load_factor"),
        ({"home_count": 0}, "home_count"),
        ({"max_loras": 4, "max_cpu_loras": 2}, "max_cpu_loras"),
    ],
)
def test_bad_settings_are_refused(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        _router(2, **kwargs)


def test_bad_membership_changes_are_refused_and_change_nothing() -> None:
    router = _router(2)
    with pytest.raises(ValueError, match="already"):
        router.add_replica("r0")
    with pytest.raises(ValueError, match="unknown replica"):
        router.remove_replica("nope")
    with pytest.raises(ValueError, match="non-empty"):
        router.add_replica("")
    assert sorted(router.replicas) == ["r0", "r1"]
    with pytest.raises(ValueError, match="no request in flight"):
        router.finish(Route(replica="r0", adapter=None, spilled=False, slots=None))
