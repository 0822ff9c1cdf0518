"""The memory plan (models/memory.py) from the published configs, the cache's room for working
memory, `explain --dry-run`, and the out-of-memory back-off through NACOSAE_FAILPOINTS."""

from __future__ import annotations

import json
import math

import pytest

from nacosae.models import memory
from nacosae.models.memory import GIB, Need, plan_memory
from tests.configfolders import llm_config_folder, pipeline_config_folder
from tests.test_explain import events_of, only_run

SMOKE = ["explain", "--preset", "smoke", "--neurons", "0:2", "--n-iters", "1"]


@pytest.fixture(scope="module")
def config_folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("configs")
    return {
        "sd-turbo": pipeline_config_folder("sd-turbo", root / "sd-turbo"),
        "sdxl": pipeline_config_folder("sdxl-base", root / "sd_xl_base_1.0"),
        "llama-1b": llm_config_folder("llama-3.2-1b-instruct.json", root / "llama-1b"),
        "llama-8b": llm_config_folder("llama-3.1-8b-instruct.json", root / "llama-8b"),
    }


def test_weights_counted_from_configs_alone_match_the_published_sizes(config_folders):
    """Counted on the meta device: SD 2.1's UNet 865.9M parameters, its VAE 83.65M, OpenCLIP-H's
    text tower 340.4M; SDXL's UNet 2567M; Llama-3.2-1B 1236M; Llama-3.1-8B 8030M."""
    turbo = memory.pipeline_facts(config_folders["sd-turbo"], "float16")
    millions = {k: round(v / 2 / 1e6, 1) for k, v in turbo.component_bytes.items()}
    assert millions == {"unet": 865.9, "vae": 83.7, "text_encoder": 340.4}
    assert turbo.native_side == 512 and turbo.denoiser == "unet"
    sdxl = memory.pipeline_facts(config_folders["sdxl"], "float16")
    assert round(sdxl.component_bytes["unet"] / 2 / 1e6) == 2567 and sdxl.native_side == 1024
    small = memory.llm_folder_need(config_folders["llama-1b"], "1b", "bfloat16", 1024)
    large = memory.llm_folder_need(config_folders["llama-8b"], "8b", "bfloat16", 1024)
    assert round(small.weights / 2 / 1e6) == 1236 and round(large.weights / 2 / 1e6) == 8030
    # the KV cache: 2 x layers x KV heads x head size x 2 bytes per token
    assert "KV 128.0 KiB/token" in large.detail and "KV 32.0 KiB/token" in small.detail
    guided = memory.t2i_need(config_folders["sdxl"], "sdxl", "float16", None, guided=True)
    plain = memory.t2i_need(config_folders["sdxl"], "sdxl", "float16", None, guided=False)
    assert abs(guided.per_item - 2 * plain.per_item) <= 1  # guidance doubles the batch


def needs_of(config_folders, t2i: str, llm: str, guided: bool) -> list[Need]:
    vision = memory.vision_model_need("resnet50", 224, "float32")
    return [
        vision,
        memory.t2i_need(config_folders[t2i], t2i, "float16", None, guided),
        memory.llm_folder_need(config_folders[llm], llm, "bfloat16", 1024),
    ]


def test_the_plan_takes_the_first_placement_that_fits_and_the_largest_batch(config_folders):
    small = needs_of(config_folders, "sd-turbo", "llama-1b", guided=False)
    large = needs_of(config_folders, "sdxl", "llama-8b", guided=True)
    roomy = plan_memory(small, "cuda", 12 * GIB)
    assert {p.mode for p in roomy.placements} == {"resident"}
    assert roomy.batch("t2i", 0) > 8 and roomy.batch("llm", 0) == 16
    for gib, modes in ((12, ("swapped", "sequential")), (16, ("swapped", "sequential")),
                       (24, ("swapped", "swapped")), (48, ("resident", "resident"))):  # fmt: skip
        plan = plan_memory(large, "cuda", gib * GIB)
        assert (plan.placement("t2i").mode, plan.placement("llm").mode) == modes, gib
        assert all(p.fits and p.batch >= 1 for p in plan.placements), gib
        assert plan.placement("vision").mode == "resident"
        turns = any(p.mode != "resident" for p in plan.placements)
        for p in plan.placements:  # what each model holds while it computes fits the budget
            held = sum(q.weights for q in plan.placements)
            if turns:  # the others are moved out, but the small explained model
                held = (p.streamed or p.weights) + (
                    plan.placement("vision").weights * (p.kind != "vision")
                )
            assert held + p.working <= gib * GIB * (1 - memory.HEADROOM), (gib, p)
    assert plan_memory(large, "cuda", 16 * GIB).batch("t2i", 0) < plan_memory(
        large, "cuda", 24 * GIB
    ).batch("t2i", 0)
    # what the user says wins
    given = plan_memory(large, "cuda", 48 * GIB, "sequential", {"t2i": 3, "llm": 2})
    assert {p.mode for p in given.placements} == {"sequential"}
    assert (given.batch("t2i", 0), given.batch("llm", 0)) == (3, 2)
    assert given.placement("t2i").chosen_by == "--t2i-batch"
    cpu = plan_memory(large, "cpu", math.inf)
    assert (cpu.batch("t2i", 0), cpu.batch("llm", 0), cpu.batch("vision", 0)) == (8, 16, 64)
    assert (
        "memory plan (cuda, 16.0 GiB budget): vision resnet50"
        in plan_memory(large, "cuda", 16 * GIB).line()
    )


def test_a_model_in_use_gets_room_for_its_working_memory(monkeypatch):
    """The budget counts activations too: using a model moves others out until its weights
    and its working memory fit (before, only the weights were counted)."""
    from tests.test_cache import GPU, SIZE, ToyCache, spec

    cache = ToyCache(budget_bytes=3 * SIZE)
    with cache.use(spec("a")) as a, cache.use(spec("b")) as b:
        pass
    assert a.where == GPU and b.where == GPU  # two models, room for a third
    cache.set_working(spec("c"), 2 * SIZE)  # c computes with two models' worth of activations
    with cache.use(spec("c")) as c:
        assert c.where == GPU
    assert a.where == "cpu" and b.where == "cpu"
    cache.set_working(spec("a"), SIZE)
    with cache.use(spec("a")):  # a comes back; c stays (there is room for a's work)
        pass
    assert c.where == GPU and a.where == GPU


@pytest.fixture
def resnet_store(invoke, image_tree):
    result = invoke(
        "controls", "--model", "resnet18", "--weights", "none", "--images", image_tree,
        "--workers", "0",
    )  # fmt: skip
    assert result.exit_code == 0, result.output


def test_dry_run_plans_for_a_card_this_machine_lacks_and_creates_nothing(
    invoke, resnet_store, config_folders, tmp_path
):
    args = [
        "explain", "--dry-run", "--neuron-id", "3", "--weights", "none", "--device", "cuda",
        "--t2i-model", config_folders["sdxl"], "--language-model", config_folders["llama-8b"],
    ]  # fmt: skip
    refused = invoke(*args)
    assert refused.exit_code == 1 and "give --gpu-memory G" in refused.output
    result = invoke(*args, "--gpu-memory", "16")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["problems"] == [] and report["device"] == "cuda"
    assert report["options"]["t2i_model"] == str(config_folders["sdxl"])
    plan = {p["kind"]: p for p in report["memory_plan"]["placements"]}
    assert plan["t2i"]["mode"] == "swapped" and plan["llm"]["mode"] == "sequential"
    assert "16.0 GiB budget" in report["plan"]
    assert not (tmp_path / "runs").exists()  # nothing was created
    smoke = invoke("explain", "--preset", "smoke", "--dry-run")
    assert smoke.exit_code == 0, smoke.output
    assert json.loads(smoke.stdout)["options"]["model"] == "tiny_cnn"
    assert not (tmp_path / "runs").exists()


def test_out_of_memory_back_offs_complete_the_run_with_its_events(
    invoke, tmp_path, monkeypatch, smoke_parts
):
    """An out-of-memory error in a text-to-image call, an LLM batch and a vision batch (the
    error a GPU raises, at each point's first call): the batches halve and the run completes
    with the events of a run without them (the LLM's and the explained model's exactly; a
    smaller text-to-image batch may move a pixel by one level, so scores agree to rounding),
    and run.json lists the three back-offs."""
    from nacosae.config import settings
    from nacosae.models import failpoints
    from tests.conftest import fresh_home

    def run(name: str, points: str | None) -> list[dict]:
        monkeypatch.setenv("NACOSAE_HOME", str(fresh_home(tmp_path / f"home-{name}", smoke_parts)))
        settings.cache_clear()  # a concept cache of its own: everything is rendered anew
        failpoints.reset()
        if points:
            monkeypatch.setenv("NACOSAE_FAILPOINTS", points)
        else:
            monkeypatch.delenv("NACOSAE_FAILPOINTS", raising=False)
        result = invoke(*SMOKE, "--out", tmp_path / name)
        assert result.exit_code == 0, result.output
        events = events_of(only_run(tmp_path / name))
        return [{k: v for k, v in e.items() if k != "scoring_seconds"} for e in events]

    plain = run("plain", None)
    assert run("rows-and-images", "llm.oom=1,vision.oom=1") == plain
    every = run("all", "t2i.oom=1,llm.oom=1,vision.oom=1")

    def steps(events):
        return [(e["neuron"], e["iteration"], e["source"], e["concept"]) for e in events]

    assert steps(every) == steps(plain)
    assert all(abs(a["score"] - b["score"]) < 0.01 for a, b in zip(every, plain, strict=True))
    record = json.loads((only_run(tmp_path / "all") / "run.json").read_text())
    assert [(b["kind"], b["from"], b["to"]) for b in record["backoffs"]] == [
        ("t2i", 8, 4), ("vision", 64, 32), ("llm", 16, 8)
    ]  # fmt: skip
    assert record["generation"]["t2i_batch"] == 4  # what a resume renders with
