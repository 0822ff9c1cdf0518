"""ModelCache policy with tiny modules. The accelerator is simulated by a recording mover
(there is no GPU here); loading, sizing and the LRU policy run for real."""

import threading
import time

import pytest
import torch
from torch import nn

from nacosae.models.cache import ModelCache, ModelSpec, object_nbytes


def linear_bytes(n: int) -> int:
    return object_nbytes(nn.Linear(n, n, bias=False))


class Recorder:
    """Stands in for `.to(device)`: records moves instead of needing a GPU."""

    def __init__(self):
        self.moves: list[tuple[str, str]] = []

    def __call__(self, obj, device):
        self.moves.append((obj.tag, device))
        return obj


def make_loader(counter: dict, delay: float = 0.0):
    def load(spec: ModelSpec):
        counter[spec.id] = counter.get(spec.id, 0) + 1
        time.sleep(delay)
        module = nn.Linear(8, 8, bias=False)  # 256 bytes
        module.tag = spec.id
        return module

    return load


def spec(name: str, device: str = "cuda:0") -> ModelSpec:
    return ModelSpec(kind="toy", id=name, device=device)


def test_object_nbytes_counts_parameters_and_buffers():
    module = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4))
    expected = (16 + 4 + 4 + 4) * 4 + (4 + 4) * 4 + 8  # params, running stats, num_batches
    assert object_nbytes(module) == expected


def test_one_load_per_spec_and_hits_counted():
    counter: dict = {}
    cache = ModelCache(budget_bytes=10_000, loaders={"toy": make_loader(counter)}, mover=Recorder())
    first = cache.get(spec("a"))
    assert cache.get(spec("a")) is first
    assert cache.get(spec("a")) is first
    assert counter == {"a": 1}
    stats = cache.stats.as_dict()
    assert stats["loads"] == 1 and stats["hits"] == 2
    assert stats["models"] == {"toy:a": linear_bytes(8)}


def test_lru_models_move_to_cpu_when_over_budget():
    mover = Recorder()
    size = linear_bytes(8)
    cache = ModelCache(budget_bytes=3 * size, loaders={"toy": make_loader({})}, mover=mover)
    for name in ("a", "b", "c"):
        cache.get(spec(name))
    cache.get(spec("a"))  # a becomes most recently used: b is now the oldest
    cache.get(spec("d"))
    assert ("b", "cpu") in mover.moves and ("a", "cpu") not in mover.moves
    assert [s.id for s in cache.placed()] == ["c", "a", "d"]
    cache.get(spec("b"))  # comes back, pushing out c
    assert mover.moves[-2:] == [("c", "cpu"), ("b", "cuda:0")]
    assert cache.stats.evictions == 2
    assert cache.stats.loads == 4


def test_offload_none_never_evicts():
    mover = Recorder()
    cache = ModelCache(
        budget_bytes=1, offload="none", loaders={"toy": make_loader({})}, mover=mover
    )
    cache.get(spec("a"))
    cache.get(spec("b"))
    assert cache.stats.evictions == 0
    assert all(device != "cpu" for _, device in mover.moves)


def test_cpu_models_are_never_evicted():
    cache = ModelCache(budget_bytes=1, loaders={"toy": make_loader({})})
    a = cache.get(spec("a", device="cpu"))
    cache.get(spec("b", device="cpu"))
    assert cache.stats.evictions == 0
    assert next(a.parameters()).device.type == "cpu"


def test_concurrent_get_loads_once():
    counter: dict = {}
    cache = ModelCache(loaders={"toy": make_loader(counter, delay=0.2)})
    results = []
    barrier = threading.Barrier(8)

    def worker():
        barrier.wait()
        results.append(cache.get(spec("shared", device="cpu")))

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert counter == {"shared": 1}
    assert all(r is results[0] for r in results)
    assert cache.stats.loads == 1 and cache.stats.hits == 7


def test_different_specs_load_in_parallel():
    cache = ModelCache(loaders={"toy": make_loader({}, delay=0.5)})
    started = time.perf_counter()
    threads = [threading.Thread(target=cache.get, args=(spec(n, device="cpu"),)) for n in "abcd"]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert cache.stats.loads == 4
    assert time.perf_counter() - started < 1.9  # serial loading would take 2 s


def test_dtype_and_device_are_part_of_the_key():
    counter: dict = {}
    cache = ModelCache(loaders={"toy": make_loader(counter)}, mover=Recorder())
    cache.get(ModelSpec(kind="toy", id="m", dtype="float32"))
    cache.get(ModelSpec(kind="toy", id="m", dtype="float16"))
    assert counter == {"m": 2}


def test_sequential_offload_uses_the_pipeline_hook():
    class Pipeline:
        def __init__(self):
            self.offloaded_to = None
            self.components = {"unet": nn.Linear(2, 2)}

        def enable_sequential_cpu_offload(self, device):
            self.offloaded_to = device

        def to(self, device):  # pragma: no cover - must not be called
            raise AssertionError("sequential offload must not place the pipeline")

    cache = ModelCache(offload="sequential", loaders={"toy": lambda s: Pipeline()})
    pipe = cache.get(spec("p"))
    assert pipe.offloaded_to == "cuda:0"
    assert cache.get(spec("p")) is pipe
    assert cache.stats.models["toy:p"] == object_nbytes(nn.Linear(2, 2))


def test_missing_loader_and_bad_offload_mode():
    cache = ModelCache()
    with pytest.raises(KeyError):
        cache.get(spec("x"))
    with pytest.raises(ValueError):
        ModelCache(offload="disk")


def test_real_move_on_cpu_keeps_weights():
    cache = ModelCache(loaders={"toy": make_loader({})})
    model = cache.get(spec("a", device="cpu"))
    assert isinstance(model, nn.Linear)
    assert model.weight.dtype == torch.float32
