"""Shared fixtures: an isolated NACOSAE_HOME per test and small real image trees.

Nothing here touches the network or the user's caches: NACOSAE_HOME, SAVE_DIR and TORCH_HOME
point into pytest's tmp dirs and the hub is offline.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

# huggingface_hub reads HF_HOME and HF_HUB_OFFLINE once, at import: give it a private cache and a
# clean environment before anything imports it. Tests set HF_HUB_CACHE / HF_HUB_OFFLINE per test;
# nacosae reads them at call time.
os.environ["HF_HOME"] = tempfile.mkdtemp(prefix="nacosae-tests-hf-")
os.environ.pop("HF_HUB_OFFLINE", None)
# one compute thread per process (this one, the CLI subprocesses, the Ray workers): the tiny
# models run no faster on more, and two workers beside the driver on two cores would otherwise
# fight over them; a Ray worker computes with the driver's thread count, so results still match
os.environ.setdefault("OMP_NUM_THREADS", "1")
# Ray workers run the test interpreter (nacosae's own import_ray does this for the CLI)
os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
import huggingface_hub.constants  # noqa: E402,F401 - lazy package: import the module itself
import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from nacosae.config import settings


def write_image_tree(root: Path, classes: int = 3, per_class: int = 4, seed: int = 0) -> Path:
    """An ImageFolder tree with mixed modes (RGB, L, CMYK JPEGs; RGBA and P PNGs) and sizes."""
    rng = np.random.default_rng(seed)
    modes = ["RGB", "L", "CMYK", "RGBA", "P"]
    for c in range(classes):
        folder = root / f"class_{c:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            height, width = int(rng.integers(160, 300)), int(rng.integers(160, 300))
            pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
            image = Image.fromarray(pixels, "RGB")
            mode = modes[(c * per_class + i) % len(modes)]
            if mode in ("RGBA", "P"):
                converted = image.convert("RGBA") if mode == "RGBA" else image.quantize(64)
                converted.save(folder / f"img_{i:03d}.png")
            else:
                image.convert(mode).save(folder / f"img_{i:03d}.jpg", quality=90)
    return root


SMOKE_PARTS = ("models", "images", "controls")  # built once; each home has its own concepts


@pytest.fixture(scope="session")
def smoke_parts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The smoke preset's tiny models, images and control store, built once per session by the
    preset's own builder (`fresh_home` links them into each test's NACOSAE_HOME)."""
    from nacosae.models.cache import ModelCache
    from nacosae.presets import build_smoke_parts

    smoke = tmp_path_factory.mktemp("smoke-parts") / "smoke"
    build_smoke_parts(smoke, ModelCache(), embedder_too=True)
    return smoke


def fresh_home(home: Path, smoke: Path) -> Path:
    """An empty NACOSAE_HOME whose smoke models, images and control store are the session's
    (linked: nothing to rebuild) and whose concept cache is its own."""
    (home / "smoke").mkdir(parents=True, exist_ok=True)
    for part in SMOKE_PARTS:
        link = home / "smoke" / part
        if not link.exists():
            link.symlink_to(smoke / part, target_is_directory=True)
    return home


@pytest.fixture(autouse=True)
def isolated_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, smoke_parts: Path) -> Path:
    # beside tmp_path, not in it: tests use tmp_path itself as a runs or store folder
    home = fresh_home(tmp_path.with_name(f"{tmp_path.name}-home"), smoke_parts)
    monkeypatch.setenv("NACOSAE_HOME", str(home))
    monkeypatch.setenv("SAVE_DIR", str(tmp_path / "runs"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf_cache"))
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HF_ENDPOINT", raising=False)
    monkeypatch.delenv("NACOSAE_DEBUG", raising=False)
    monkeypatch.chdir(tmp_path)
    settings.cache_clear()
    yield home
    settings.cache_clear()


@pytest.fixture(scope="session")
def image_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3 classes x 4 images of mixed modes; read-only by convention."""
    return write_image_tree(tmp_path_factory.mktemp("images") / "val")


@pytest.fixture
def controls(invoke, image_tree):
    """The tiny CNN's control store over `image_tree` (3 classes x 4 images)."""
    result = invoke("controls", "--model", "tiny_cnn", "--images", image_tree, "--workers", "0")
    assert result.exit_code == 0, result.output


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


@pytest.fixture
def invoke(runner: CliRunner):
    """Run the CLI in-process; returns the Click result (exit_code, output)."""
    from nacosae.cli import app

    def run(*args: str):
        return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)

    return run


@pytest.fixture
def fake_hub(monkeypatch: pytest.MonkeyPatch):
    """A loopback stand-in for the hub's HTTP API; HF_ENDPOINT points at it, online mode."""
    from tests.fakehub import FakeHubServer

    with FakeHubServer() as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        yield hub


@pytest.fixture(scope="session")
def t2i_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny diffusers pipeline saved as a local folder (usable as --t2i-model)."""
    from nacosae.models.tiny import tiny_text2image_pipeline

    folder = tmp_path_factory.mktemp("t2i") / "tiny-sd"
    tiny_text2image_pipeline(folder.parent / "work").save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def runs_dir(tmp_path_factory, smoke_parts):
    """A done 2-neuron smoke run, a failed run (its LLM broke), an interrupted run and a corrupt
    directory."""
    from typer.testing import CliRunner

    from nacosae.cli import app
    from nacosae.config import settings
    from nacosae.models import language

    root = tmp_path_factory.mktemp("report")
    runs = root / "runs"
    mp = pytest.MonkeyPatch()
    mp.setenv("NACOSAE_HOME", str(fresh_home(root / "home", smoke_parts)))
    mp.setenv("HF_HUB_OFFLINE", "1")
    settings.cache_clear()
    runner = CliRunner()
    base = ["explain", "--preset", "smoke", "--n-iters", "2", "--out", str(runs)]
    done = runner.invoke(app, [*base, "--neurons", "0,5"])
    assert done.exit_code == 0, done.output

    def fail(self, requests):
        from nacosae.errors import NacosaeError

        raise NacosaeError("the language model broke down")

    def interrupt(self, requests):
        raise KeyboardInterrupt

    mp.setattr(language.LocalLLM, "chat_many", fail)
    assert runner.invoke(app, [*base, "--neuron-id", "9"]).exit_code == 1
    mp.setattr(language.LocalLLM, "chat_many", interrupt)
    assert runner.invoke(app, [*base, "--neuron-id", "3"]).exit_code == 130
    mp.undo()
    settings.cache_clear()
    (runs / "zz-corrupt").mkdir()
    (runs / "zz-corrupt" / "run.json").write_text("{half a json")
    return runs


LONGEST_FIRST = ("tests/test_ray.py", "tests/test_structured.py")  # the two processes end together


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The longest test files first: a long file handed out last would run on alone."""

    def rank(item: pytest.Item) -> int:
        path = item.nodeid.split("::")[0]
        return LONGEST_FIRST.index(path) if path in LONGEST_FIRST else len(LONGEST_FIRST)

    items.sort(key=rank)
