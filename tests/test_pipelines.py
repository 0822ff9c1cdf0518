"""Text-to-image pipelines beyond the UNet: tiny random SD3, FLUX (schnell-like), PixArt-Sigma
and Sana pipelines built from configs load through nacosae's loader and render through its
renderer in both noise schemes; their steps and guidance come from `model_index.json`, not
from a path; a pipeline nacosae does not render with is one line."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from nacosae.errors import NacosaeError
from nacosae.models.cache import ModelCache, ModelHandle, ModelSpec
from nacosae.models.text2image import (
    GenerationSettings,
    TextToImage,
    generation_defaults,
    load_pipeline,
    native_side,
)
from tests.chatserver import ChatServer
from tests.configfolders import pipeline_config_folder
from tests.test_explain import answers, explain_args, no_run_made

KINDS = {  # tiny pipeline -> (class, steps and guidance it is made for, native side)
    "sd3": ("StableDiffusion3Pipeline", (28, 4.5), 64),
    "flux": ("FluxPipeline", (4, 0.0), 1024),  # no guidance embeddings: schnell's setting
    "pixart-sigma": ("PixArtSigmaPipeline", (20, 4.5), 64),
    "sana": ("SanaPipeline", (20, 4.5), 64),
}


@pytest.fixture(scope="session")
def transformer_pipelines(tmp_path_factory):
    from nacosae.models.tiny import tiny_transformer_pipeline

    root = tmp_path_factory.mktemp("pipelines")
    for kind in KINDS:
        tiny_transformer_pipeline(kind, root / "work").save_pretrained(root / kind)
    return root


@pytest.mark.parametrize("kind", list(KINDS))
def test_transformer_pipelines_load_and_render_through_our_code(transformer_pipelines, kind):
    class_name, (steps, guidance), side = KINDS[kind]
    folder = transformer_pipelines / kind
    found = generation_defaults(str(folder), folder)
    assert (found.steps, found.guidance) == (steps, guidance)
    assert class_name in found.reason
    handle = ModelHandle(ModelCache(), ModelSpec("t2i", str(folder)), load_pipeline)
    with handle.use() as pipeline:
        assert type(pipeline).__name__ == class_name and native_side(pipeline) == side
    size = 64  # FLUX renders 1024 px by default: a small size keeps the test fast
    for seeds in ("hashed", "single"):  # explain's noise, and the evaluation's one generator
        settings = GenerationSettings(
            str(folder), 2, guidance, height=size, width=size, seeds=seeds,
            prompts="template", prompt_template="{concept}",
        )  # fmt: skip
        t2i = TextToImage(handle, settings)
        images = t2i.render_many([("red apple", 0, 2), ("blue car", 0, 1)], seed=3)
        assert [im.size for im in images] == [(size, size)] * 3
        again = t2i.render("red apple", 1, seed=3, first=1)[0]  # image 1 alone: the same
        assert np.abs(np.asarray(again, int) - np.asarray(images[1], int)).max() <= 1


def test_defaults_come_from_the_pipeline_and_its_own_name_never_a_parent_folder(tmp_path, t2i_dir):
    """A local SDXL base folder named like the original's checkpoint gets SDXL's guidance 5,
    even under a folder called turbo; a distilled pipeline (a trailing-spacing Euler scheduler,
    as sd-turbo's) gets few steps and no guidance whatever its name."""
    sdxl = pipeline_config_folder("sdxl-base", tmp_path / "turbo-runs" / "sd_xl_base_1.0")
    found = generation_defaults(str(sdxl), sdxl)
    assert (found.steps, found.guidance) == (30, 5.0)
    turbo = pipeline_config_folder("sd-turbo", tmp_path / "my-model")
    found = generation_defaults(str(turbo), turbo)
    assert (found.steps, found.guidance) == (4, 0.0) and "trailing-spacing" in found.reason
    renamed = tmp_path / "lightweight"  # the tiny pipeline: EulerAncestral, trailing spacing
    shutil.copytree(t2i_dir, renamed)
    assert generation_defaults(str(renamed), renamed).steps == 4
    index = json.loads((turbo / "scheduler" / "scheduler_config.json").read_text())
    index["timestep_spacing"] = "leading"  # SD 2.1 base: a full-step model
    (turbo / "scheduler" / "scheduler_config.json").write_text(json.dumps(index))
    assert (generation_defaults(str(turbo), turbo).steps, 7.5) == (30, 7.5)
    named = generation_defaults("stabilityai/sdxl-turbo", None)  # not downloaded: its name
    assert (named.steps, named.guidance) == (4, 0.0) and "turbo" in named.reason


def test_a_pipeline_nacosae_does_not_render_with_is_one_line(invoke, controls, t2i_dir, tmp_path):
    other = tmp_path / "kandinsky"
    shutil.copytree(t2i_dir, other)
    index = json.loads((other / "model_index.json").read_text())
    (other / "model_index.json").write_text(
        json.dumps({**index, "_class_name": "KandinskyV22Pipeline"})
    )
    with pytest.raises(NacosaeError, match="is a KandinskyV22Pipeline: nacosae renders with"):
        load_pipeline(ModelSpec("t2i", str(other)))
    with ChatServer(answers("<answer>x</answer>")) as server:
        result = invoke(*explain_args(other, server, "--neuron-id", "0"))
    assert result.exit_code == 1
    assert "is a KandinskyV22Pipeline: nacosae renders with" in " ".join(result.output.split())
    assert "Traceback" not in result.output
    assert no_run_made(tmp_path)  # found before the run began
