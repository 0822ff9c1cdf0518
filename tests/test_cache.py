"""The ModelCache's residency protocol. There is no GPU here, so the accelerator is mocked at the
one place a GPU is needed: `FakeGPUModel.to()` records where its weights are, and computing on a
device they are not on fails as torch does. Everything else (loading, sizing, pins, LRU, waiting
threads, the library offload hooks) runs for real."""

import threading
import time

import pytest
import torch
from torch import nn

from nacosae.models.cache import ModelCache, ModelHandle, ModelSpec
from nacosae.models.language import LLMBundle
from nacosae.models.residency import object_nbytes

GPU = "cuda:0"


class FakeGPUModel(nn.Module):
    """A model whose `.to(device)` only records the move (there is no GPU to move to)."""

    def __init__(self, tag: str) -> None:
        super().__init__()
        self.tag = tag
        self.linear = nn.Linear(8, 8, bias=False)  # 256 bytes
        self.where = "cpu"

    def to(self, device):  # noqa: ANN001, ANN201 - torch's signature
        self.where = str(device)
        return self

    def forward(self) -> str:
        """Where the weights are while it computes."""
        return self.where

    def compute(self, device: str) -> torch.Tensor:
        if self.where != device:
            raise RuntimeError(
                f"Expected all tensors to be on {device}, weights are on {self.where}"
            )
        return self.linear(torch.ones(1, 8))


SIZE = object_nbytes(FakeGPUModel("size"))


def make_loader(counter: dict | None = None, delay: float = 0.0):
    def load(spec: ModelSpec) -> FakeGPUModel:
        if counter is not None:
            counter[spec.id] = counter.get(spec.id, 0) + 1
        time.sleep(delay)
        return FakeGPUModel(spec.id)

    return load


def spec(name: str, device: str = GPU, offload: str = "cpu") -> ModelSpec:
    return ModelSpec(kind="toy", id=name, device=device, offload=offload)


class ToyCache(ModelCache):
    """The real cache, with the toy loader passed for kind "toy" (as a ModelHandle would)."""

    def __init__(self, loader=None, **kw) -> None:  # noqa: ANN001
        super().__init__(**kw)
        self.toy_loader = loader or make_loader()

    def _loader_for(self, spec: ModelSpec, loader):  # noqa: ANN001, ANN202
        return loader or (self.toy_loader if spec.kind == "toy" else None)

    def load(self, spec: ModelSpec, loader=None) -> int:  # noqa: ANN001
        return super().load(spec, self._loader_for(spec, loader))

    def use(self, spec: ModelSpec, loader=None):  # noqa: ANN001, ANN201
        return super().use(spec, self._loader_for(spec, loader))


def gpu_cache(models: int, **kw) -> ModelCache:
    return ToyCache(budget_bytes=models * SIZE, **kw)


def test_object_nbytes_counts_parameters_and_buffers():
    module = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4))
    expected = (16 + 4 + 4 + 4) * 4 + (4 + 4) * 4 + 8  # params, running stats, num_batches
    assert object_nbytes(module) == expected
    bundle = LLMBundle(nn.Linear(2, 2, bias=False), tokenizer=None)
    assert object_nbytes(bundle) == 16


def test_one_load_per_spec_and_the_same_object_in_every_use():
    counter: dict = {}
    cache = ToyCache(make_loader(counter), budget_bytes=10 * SIZE)
    with cache.use(spec("a")) as first:
        pass
    with cache.use(spec("a")) as again:
        assert again is first
    assert counter == {"a": 1}
    assert cache.stats.loads == 1 and cache.stats.hits == 1
    assert cache.stats.models == {"toy:a": SIZE}


def test_use_places_on_the_device_and_lru_swaps_only_unpinned_models():
    cache = gpu_cache(3)
    models = {}
    for name in "abc":
        with cache.use(spec(name)) as model:
            models[name] = model
            assert model.where == GPU
    with cache.use(spec("a")):  # a becomes most recently used: b is now the oldest
        pass
    with cache.use(spec("d")) as d:
        assert d.compute(GPU).shape == (1, 8)
    assert models["b"].where == "cpu" and models["a"].where == GPU
    assert [s.id for s in cache.placed()] == ["c", "a", "d"]
    with cache.use(spec("b")) as b:  # comes back, pushing out c
        assert b.where == GPU
    assert models["c"].where == "cpu"
    assert cache.stats.evictions == 2 and cache.stats.loads == 4


def test_a_pinned_model_is_never_moved_even_over_budget():
    cache = gpu_cache(1)
    with cache.use(spec("a")) as a:
        with cache.use(spec("b")) as b:  # the same thread holds a: over budget, not waiting
            assert a.compute(GPU) is not None and b.compute(GPU) is not None
        assert a.where == GPU
    with cache.use(spec("c")):
        pass
    assert a.where == "cpu" and b.where == "cpu"


def test_another_thread_waits_for_a_pinned_model_instead_of_moving_it():
    cache = gpu_cache(1)
    events: list[str] = []
    a_pinned = threading.Event()
    failures: list[Exception] = []

    def holds_a():
        with cache.use(spec("a")) as a:
            a_pinned.set()
            for _ in range(20):  # a forward pass that takes a while
                try:
                    a.compute(GPU)
                except RuntimeError as exc:
                    failures.append(exc)
                time.sleep(0.01)
            events.append("a released")

    def wants_b():
        a_pinned.wait()
        with cache.use(spec("b")) as b:
            events.append("b placed")
            b.compute(GPU)

    threads = [threading.Thread(target=holds_a), threading.Thread(target=wants_b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert failures == []
    assert events == ["a released", "b placed"]
    assert [s.id for s in cache.placed()] == ["b"]


def test_concurrent_first_use_loads_once():
    counter: dict = {}
    cache = ToyCache(make_loader(counter, delay=0.2))
    results = []
    barrier = threading.Barrier(8)

    def worker():
        barrier.wait()
        with cache.use(spec("shared", device="cpu")) as model:
            results.append(model)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert counter == {"shared": 1}
    assert all(r is results[0] for r in results)
    assert cache.stats.loads == 1 and cache.stats.hits == 7


def test_none_never_evicts_and_cpu_models_are_never_moved():
    cache = gpu_cache(1)
    with cache.use(spec("a", offload="none")) as a:
        pass
    with cache.use(spec("b", offload="none")):
        pass
    assert a.where == GPU and cache.stats.evictions == 0
    with cache.use(spec("c", device="cpu")) as c:
        assert c.where == "cpu"
    assert spec("c", device="cpu", offload="sequential").residency == "none"


def test_dtype_device_and_offload_mode_are_part_of_the_key():
    counter: dict = {}
    cache = ToyCache(make_loader(counter))
    cache.load(ModelSpec(kind="toy", id="m", dtype="float32"))
    cache.load(ModelSpec(kind="toy", id="m", dtype="float16"))
    assert counter == {"m": 2}
    with pytest.raises(ValueError, match="offload must be one of"):
        ModelSpec(kind="toy", id="m", offload="disk")
    with pytest.raises(KeyError):
        cache.load(ModelSpec(kind="nobody", id="m"))


def test_switching_offload_mode_gives_a_model_without_the_old_hooks():
    """Sequential first, then whole-model swapping: the second use must not get the hooked
    object (diffusers refuses `.to()` on it), and the hooked copy is dropped."""
    cache = gpu_cache(4)
    cache.load(spec("p", offload="sequential"))
    hooked = dict(cache.loaded())[spec("p", offload="sequential")]
    assert hasattr(hooked.linear, "_hf_hook")
    with cache.use(spec("p", offload="cpu")) as plain:
        assert plain is not hooked and not hasattr(plain.linear, "_hf_hook")
        assert plain.compute(GPU) is not None
    assert [s.offload for s, _ in cache.loaded()] == ["none"]  # plain object, swappable


def llm_loader(spec: ModelSpec) -> LLMBundle:
    """A bundle like the local LLM's (a Llama's rotary buffers would need a real GPU: accelerate
    places buffers on the execution device when it attaches the hooks)."""
    model = nn.Sequential(nn.Embedding(16, 8), nn.Linear(8, 16))
    return LLMBundle(model, tokenizer=None)


def test_sequential_offload_of_a_local_llm_hooks_its_model():
    """The LLM bundle is not a module: the layer-by-layer hooks go on the model inside it."""
    cache = ModelCache(budget_bytes=1)
    llm = ModelSpec("llm", "tiny", device=GPU, offload="sequential")
    handle = ModelHandle(cache, llm, llm_loader)
    handle.load()
    with handle.use() as bundle:
        assert hasattr(bundle.model[1], "_hf_hook")
        assert {p.device.type for p in bundle.model.parameters()} == {"meta"}  # weights in RAM
    assert cache.placed() == [] and cache.stats.evictions == 0
    assert "streamed to cuda:0 layer by layer" in cache.plan([handle.spec])[0]


def test_model_offload_moves_the_whole_model_per_use_and_back_after_the_last():
    """accelerate's model-level hook moves the model to the device when it computes; the cache
    sends it back once no `use` scope holds it."""
    cache = ToyCache()
    handle = ModelHandle(cache, spec("m", offload="model"))
    with handle.use() as model:
        assert model.where == "cpu"  # nothing moves before it computes
        assert model() == GPU
        with handle.use():
            pass
        assert model.where == GPU  # still in use by the outer scope
    assert model.where == "cpu"
    assert cache.placed() == []
    assert "moved whole to cuda:0 while it computes" in cache.plan([handle.spec])[0]
