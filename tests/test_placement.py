"""Fitting the stages' resources to the Ray nodes before anything is placed (actors/executor.py fit_resources):
pure arithmetic on what the nodes have free, no Ray."""

import pytest

from actorcast.actors.executor import MIN_SHARD_CPUS, NodeRoom, Resources, default_resources, fit_resources
from actorcast.models.errors import ActorcastError, ConfigError


def _wanted(shards: int, device: str = "cpu") -> dict[str, Resources]:
    return {k: default_resources(k, shards, device) for k in ("audio", "motion", "decoder")}


def _placeable(placement, shards: int, rooms: list[NodeRoom]) -> bool:
    """Greedy, as Ray's SPREAD places one actor after another: audio and motion on home, then each shard on any
    node with room left."""
    free = {r.node_id: r.cpus for r in rooms}
    res = placement.resources
    free[placement.home] -= res["audio"].num_cpus + res["motion"].num_cpus
    if free[placement.home] < -1e-9:
        return False
    for _ in range(shards):
        node = next((n for n, f in free.items() if f >= res["decoder"].num_cpus - 1e-9), None)
        if node is None:
            return False
        free[node] -= res["decoder"].num_cpus
    return True


def test_what_fits_is_left_as_asked():
    rooms = [NodeRoom("here", 2.0)]  # the 2-core machine the defaults were made for
    placement = fit_resources(_wanted(2), 2, rooms, "here")
    assert placement.resources == _wanted(2) and placement.home == "here"


@pytest.mark.parametrize("cpus, shards", [
    ([1, 1, 1], 1),  # `actorcast cluster up`: a head and two workers of 1 CPU; one shard wanted 1.5 CPUs
    ([1, 1], 2),     # a shard of 0.75 fits the worker, but the head keeps only 0.7 after audio and motion
    ([1, 1], 3),
    ([1, 2, 1], 2),
    ([0, 1, 1], 1),  # a head without CPUs: audio and motion go to a worker
    ([1, 1, 1], 16),
])
def test_every_stage_fits_a_node(cpus, shards):
    rooms = [NodeRoom(f"n{i}", float(c)) for i, c in enumerate(cpus)]
    placement = fit_resources(_wanted(shards), shards, rooms, "n0")
    decoder = placement.resources["decoder"]
    assert MIN_SHARD_CPUS <= decoder.num_cpus <= _wanted(shards)["decoder"].num_cpus
    assert _placeable(placement, shards, rooms)


def test_the_share_is_the_largest_that_fits():
    placement = fit_resources(_wanted(2), 2, [NodeRoom("head", 1.0), NodeRoom("worker", 1.0)], "head")
    assert placement.home == "head"
    assert placement.resources["decoder"].num_cpus == pytest.approx(0.7)  # one on the head's 0.7, one on the worker
    assert placement.resources["motion"] == _wanted(2)["motion"]


def test_too_many_shards_is_one_line_that_says_how_many_fit():
    with pytest.raises(ConfigError) as e:
        fit_resources(_wanted(40), 40, [NodeRoom("head", 1.0), NodeRoom("worker", 1.0)], "head")
    message = str(e.value)
    assert "\n" not in message
    assert message.startswith("--shards 40 does not fit the Ray cluster")
    assert "pass --shards 34 or fewer" in message  # 0.7 / 0.05 + 1 / 0.05


def test_no_free_cpu_is_one_line():
    with pytest.raises(ActorcastError, match="no free CPU"):
        fit_resources(_wanted(1), 1, [NodeRoom("head", 0.0)], "head")


def test_gpus_are_whole_and_counted():
    rooms = [NodeRoom("a", 8.0, 2.0)]
    with pytest.raises(ConfigError, match="pass --shards 1 or fewer"):
        fit_resources(_wanted(2, "cuda"), 2, rooms, "a")
    assert fit_resources(_wanted(1, "cuda"), 1, rooms, "a").resources["decoder"].num_gpus == 1.0
