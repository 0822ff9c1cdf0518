"""Token-level SAE latents on a real architecture; prints JSON lines.

torchvision vit_b_16 (seeded random weights) and a random ReLU SAE of `--latents` latents on
the last encoder block's tokens (197 x 768 per image): seconds per image and peak memory of the
readout the control store uses, for the plain pooled output, the SAE on the pooled output
(`--latent-pooling none`) and every token encoded then max-pooled (`max`), over `--images`
random images in batches of `--batch` (the store's own batch loop, scaled down).

Run: `uv run python benchmarks/sae.py [--latents 16384 --images 64 --batch 32]` (about two
minutes on 2 CPU cores).
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latents", type=int, default=16384)
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--batch", type=int, default=32)
    args = parser.parse_args()

    import torch

    from nacosae.models.sae import SparseAutoencoder
    from nacosae.models.units import Readout
    from nacosae.models.vision import layer_activations, load_vision_model

    torch.set_num_threads(max(1, torch.get_num_threads()))
    model, _ = load_vision_model("vit_b_16", "none")
    layer = "encoder.layers.encoder_layer_11"
    generator = torch.Generator().manual_seed(0)
    sae = SparseAutoencoder(
        Path("random-sae"),
        "random",
        torch.randn(768, args.latents, generator=generator) * 0.05,
        torch.randn(args.latents, generator=generator) * 0.1,
        torch.randn(768, generator=generator) * 0.1,
    )
    images = torch.randn(args.images, 3, 224, 224, generator=generator)
    readouts = {
        "pooled, no SAE": Readout(),
        "SAE on the pooled output": Readout(sae=sae, latents="none"),
        "SAE on every token, max": Readout(sae=sae, latents="max"),
    }
    for name, readout in readouts.items():
        started = time.perf_counter()
        before = peak_rss_mib()
        rows = [
            layer_activations(model, layer, images[i : i + args.batch], readout)
            for i in range(0, args.images, args.batch)
        ]
        seconds = time.perf_counter() - started
        units = int(rows[0].shape[1])
        print(
            json.dumps(
                {
                    "readout": name,
                    "latents": args.latents,
                    "units": units,
                    "images": args.images,
                    "batch": args.batch,
                    "seconds_per_image": round(seconds / args.images, 4),
                    "peak_rss_mib": round(peak_rss_mib(), 1),
                    "peak_rss_growth_mib": round(peak_rss_mib() - before, 1),
                    "store_mib_per_50k_images_float32": round(50_000 * units * 4 / 2**20, 1),
                }
            ),
            flush=True,
        )


if __name__ == "__main__":
    main()
