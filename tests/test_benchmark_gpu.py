"""`benchmarks/gpu.py --tiny --device cpu`: the GPU benchmark's code paths, on tiny configs, so
that CI runs every section the GPU run relies on (the real sizes need a lent GPU). The `ray`
section is left out: it starts a Ray cluster and a worker process (half a minute on 2 cores) to
run code that tests/test_ray.py covers."""

import importlib.util
import json
from pathlib import Path

GPU_SCRIPT = Path(__file__).parents[1] / "benchmarks" / "gpu.py"


def test_gpu_benchmark_runs_every_section_on_tiny_configs(tmp_path):
    spec = importlib.util.spec_from_file_location("gpu_benchmark", GPU_SCRIPT)
    gpu = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu)
    sections = [s for s in gpu.SECTIONS if s != "ray"]
    assert gpu.main(["--tiny", "--device", "cpu", "--out", str(tmp_path), "--only", *sections]) == 0
    lines = [json.loads(line) for line in (tmp_path / "gpu.jsonl").read_text().splitlines()]
    by_section: dict[str, list[dict]] = {}
    for line in lines:
        by_section.setdefault(line["section"], []).append(line)
    assert set(sections) <= set(by_section)
    assert not any("error" in line or "skipped" in line for line in lines)
    assert [c["model"] for c in by_section["controls"]] == ["tiny_cnn", "tiny_vit"]
    memory = by_section["memory"]  # one cap in --tiny mode, both settings, each completed
    assert [(m["gpu_gib"], m["setting"]) for m in memory] == [(16, "default"), (16, "recommended")]
    assert all(m["completed"] and set(m["plan"]) == {"vision", "t2i", "llm"} for m in memory)
    pipelines = by_section["pipelines"]  # a transformer denoiser at its native size
    assert {p["pipeline"] for p in pipelines} == {"StableDiffusion3Pipeline"}
    assert all(p["image_size"] == [p["native_side"]] * 2 for p in pipelines)
    (layer,) = by_section["layer"]
    assert layer["units"] == 4 and layer["concepts_scored"] > layer["concepts_rendered"]
    (explain,) = by_section["explain"]
    # random weights: the LLM may need re-asks; every scored concept was rendered twice (num_img 2)
    assert explain["llm_calls"] >= 1
    assert explain["images_rendered"] == 2 * explain["concepts_scored"]
    assert [t["batch"] for t in by_section["t2i"]] == [1, 8, 32]
    assert [t["batch"] for t in by_section["llm"]] == [1, 8, 32]
    assert all(t["constrained_tokens_per_s"] > 0 for t in by_section["llm"])  # grammar on and off
    offload = by_section["offload"]
    assert [o["variant"] for o in offload] == [
        "swapped",
        "model",
        "sequential",
        "cpu-after-sequential",
    ]
    assert all(o["events_equal_reference"] for o in offload)
    (large,) = by_section["large"]
    assert large["completed"] and large["offload"] == "sequential"
    assert (
        tmp_path / "models" / "tiny-sd" / "unet" / "diffusion_pytorch_model.fp16.safetensors"
    ).is_file()
