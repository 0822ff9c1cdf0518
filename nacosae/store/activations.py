"""The control activation store: every unit's activation on every control image.

Layout of `NACOSAE_HOME/controls/<model>/<layer>/` (see `store_dir`):

- `index.json`: format version, identity (model, layer, weights, dataset), dtype, pooling,
  preprocessing, classes with `[start, stop)` row ranges, shards with row ranges and sha256,
  skipped (unreadable) images, creation time and package version. `status` is `building` until
  the last file is in place, then `complete`.
- `activations-0000i-of-0000N.safetensors`: tensor `activations [rows, units]`, image-major,
  one per fixed span of image files (so a killed build resumes at the first missing shard).
- `units.safetensors`: `activations [units, images]` (one unit is one contiguous read),
  `class_means [classes, units]` (float32) and, for SAE latents, `firing_rate [units]`: the
  share of control images on which a latent is above 0 (`index.json` counts the dead ones).

Every file is written to a temporary name and renamed; `index.json` is rewritten after each
shard. Nothing is pickled.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nacosae import __version__
from nacosae.errors import ControlsMissing, CorruptStore, StoreConflict
from nacosae.store.atomic import (
    atomic_write,
    atomic_write_json,
    remove_stale_temporaries,
    sha256_file,
)

if TYPE_CHECKING:
    import torch

FORMAT_VERSION = 2  # 2: preprocessing and units (token pooling, SAE) in the identity
INDEX = "index.json"
UNITS = "units.safetensors"
IDENTITY_KEYS = ("model", "layer", "weights", "dataset", "dtype", "preprocessing", "units")


def classes_by_mean(means: Any, lowest: bool = False) -> list[int]:
    """Class indices by one unit's class mean (`[classes]`), highest first (`lowest`: lowest
    first); a class without images (NaN) comes last, ties keep class order. The search's
    initial history starts from the first of these; `top-images --classes` lists them."""
    import numpy as np

    values = np.asarray(means, dtype=np.float64)
    keys = np.nan_to_num(values, nan=np.inf) if lowest else -np.nan_to_num(values, nan=-np.inf)
    return [int(i) for i in np.argsort(keys, kind="stable")]


def store_dir(controls_root: Path, model: str, layer: str, variant: str = "") -> Path:
    """`<root>/<model>/<layer>`, or `<layer>@<variant>` for other units of the layer (token
    mean, SAE latents); `hf:org/repo` becomes the folder `hf--org--repo`."""
    return Path(controls_root) / safe_dir_name(model) / (f"{layer}@{variant}" if variant else layer)


def safe_dir_name(name: str) -> str:
    """A model name as one folder name: `hf:org/repo` -> `hf--org--repo` (HF cache style)."""
    return name.replace(":", "--").replace("/", "--").strip("-.") or "model"


def shard_name(i: int, n: int) -> str:
    return f"activations-{i + 1:05d}-of-{n:05d}.safetensors"


def shard_spans(n_files: int, shard_size: int) -> list[tuple[int, int]]:
    """Fixed `[start, stop)` spans of file positions, one per shard."""
    return [(s, min(s + shard_size, n_files)) for s in range(0, n_files, shard_size)]


def _save_safetensors(path: Path, tensors: dict[str, torch.Tensor], meta: dict[str, str]) -> None:
    from safetensors.torch import save_file

    atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=meta))


def _read_index(directory: Path) -> dict[str, Any] | None:
    path = directory / INDEX
    if not path.is_file():
        return None
    try:
        index = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CorruptStore(
            f"{path} is unreadable ({exc.__class__.__name__}): rerun `nacosae controls` with "
            "--overwrite"
        ) from exc
    if not isinstance(index, dict) or "identity" not in index:
        raise CorruptStore(f"{path} is not a nacosae store index: rerun with --overwrite")
    return index


def _verify_file(directory: Path, entry: dict[str, Any], full: bool = True) -> None:
    path = directory / entry["file"]
    hint = "rerun `nacosae controls` with --overwrite"
    if not path.is_file():
        raise CorruptStore(f"store file {path} is missing: {hint}")
    if path.stat().st_size != entry["bytes"]:
        raise CorruptStore(
            f"store file {path} is truncated or altered ({path.stat().st_size} bytes, index "
            f"says {entry['bytes']}): {hint}"
        )
    if full and sha256_file(path) != entry["sha256"]:
        raise CorruptStore(f"store file {path} fails its sha256 check: {hint}")


@dataclass
class StoreBuilder:
    """Writes a store shard by shard; `begin` tells where an interrupted build left off."""

    directory: Path
    identity: dict[str, str]
    n_units: int
    spans: list[tuple[int, int]]
    details: dict[str, Any]  # pooling, preprocessing, classes (without ranges), dataset size

    def __post_init__(self) -> None:
        self.directory = Path(self.directory)
        self.index: dict[str, Any] = {}
        self.complete = False

    def begin(self, overwrite: bool = False) -> int:
        """Prepare the directory; return the number of shards already done and verified.

        A complete store with the same identity is kept as it is (`self.complete` is set);
        one with another identity is refused unless `overwrite`.
        """
        self.directory.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(self.directory)
        try:
            index = _read_index(self.directory)
        except CorruptStore:
            if not overwrite:
                raise
            index = None
        if index is not None and not overwrite:
            self._check_identity(index)
            if index.get("status") == "building" and index.get("spans") != [
                list(s) for s in self.spans
            ]:
                raise StoreConflict(
                    f"an unfinished store in {self.directory} was started with another shard "
                    "size: rerun with the same --shard-size, or with --overwrite"
                )
        self.complete = index is not None and not overwrite and index["status"] == "complete"
        if self.complete:
            for entry in (*index["shards"], index["units_file"]):
                _verify_file(self.directory, entry)
            self.index = index
            return len(self.spans)
        if index is None or overwrite:
            self._clear()
            self.index = self._fresh_index()
            atomic_write_json(self.directory / INDEX, self.index)
            return 0
        self.index = index
        done = 0
        for entry in index["shards"]:
            try:
                _verify_file(self.directory, entry)
            except CorruptStore:
                break
            done += 1
        del self.index["shards"][done:]
        return done

    def _check_identity(self, index: dict[str, Any]) -> None:
        theirs = index.get("identity", {})
        diffs = [
            f"{k}: stored {theirs.get(k)!r}, requested {self.identity[k]!r}"
            for k in IDENTITY_KEYS
            if theirs.get(k) != self.identity[k]
        ]
        if diffs:
            raise StoreConflict(
                f"a different store exists in {self.directory} ({'; '.join(diffs)}): "
                "rerun with --overwrite to replace it"
            )

    def abandon(self) -> None:
        """Remove what this build wrote (it produced nothing usable)."""
        self._clear()
        remove_stale_temporaries(self.directory)
        for folder in (self.directory, self.directory.parent):  # <model>/<layer>, then <model>
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()

    def _clear(self) -> None:
        for path in self.directory.glob("activations-*.safetensors"):
            path.unlink()
        for name in (UNITS, INDEX):
            (self.directory / name).unlink(missing_ok=True)

    def _fresh_index(self) -> dict[str, Any]:
        return {
            "format_version": FORMAT_VERSION,
            "status": "building",
            "identity": dict(self.identity),
            **self.identity,
            "n_units": self.n_units,
            **self.details,
            "spans": [list(s) for s in self.spans],
            "shards": [],
            "skipped": [],
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "nacosae_version": __version__,
        }

    def next_row(self) -> int:
        shards = self.index["shards"]
        return shards[-1]["rows"][1] if shards else 0

    def write_shard(
        self,
        i: int,
        activations: torch.Tensor,
        labels: list[int],
        skipped: list[str],
    ) -> None:
        """Write shard `i` (rows of the readable images of span i) and record it in the index."""
        import torch

        n = len(self.spans)
        name = shard_name(i, n)
        start = self.next_row()
        stop = start + activations.shape[0]
        meta = {
            "format": "nacosae-controls",
            "model": self.identity["model"],
            "layer": self.identity["layer"],
            "rows": f"{start}:{stop}",
            "files": f"{self.spans[i][0]}:{self.spans[i][1]}",
        }
        tensors = {
            "activations": activations.contiguous(),
            "labels": torch.tensor(labels, dtype=torch.int32),
        }
        path = self.directory / name
        _save_safetensors(path, tensors, meta)
        self.index["shards"].append(
            {
                "file": name,
                "files": list(self.spans[i]),
                "rows": [start, stop],
                "bytes": path.stat().st_size,
                "sha256": sha256_file(path),
                "skipped": skipped,
            }
        )
        atomic_write_json(self.directory / INDEX, self.index)

    def finish(self, class_names: list[str]) -> dict[str, Any]:
        """Write the unit-major file and the final index; returns the index."""
        import torch
        from safetensors.torch import load_file

        parts = [load_file(str(self.directory / e["file"])) for e in self.index["shards"]]
        image_major = torch.cat([p["activations"] for p in parts])
        labels = torch.cat([p["labels"] for p in parts]).long()
        n_classes = len(class_names)
        counts = torch.bincount(labels, minlength=n_classes)
        sums = torch.zeros(n_classes, self.n_units, dtype=torch.float64)
        sums.index_add_(0, labels, image_major.double())
        class_means = (sums / counts.unsqueeze(1)).float()  # NaN for a class with no rows
        units_path = self.directory / UNITS
        meta = {"format": "nacosae-controls-units", "layout": "activations[units, images]"}
        tensors = {"activations": image_major.t().contiguous(), "class_means": class_means}
        firing = None
        if self.details.get("sae"):  # latents: which fire on the controls, and how often
            firing = (image_major > 0).float().mean(dim=0)
            tensors["firing_rate"] = firing
        _save_safetensors(units_path, tensors, meta)
        bounds = torch.cumsum(counts, 0).tolist()
        classes = []
        for c, entry in enumerate(self.details["classes"]):
            start = bounds[c - 1] if c else 0
            classes.append({**entry, "rows": [start, bounds[c]]})
        self.index.update(
            {
                "status": "complete",
                "n_images": int(image_major.shape[0]),
                "classes": classes,
                "skipped": [f for e in self.index["shards"] for f in e["skipped"]],
                "units_file": {
                    "file": UNITS,
                    "bytes": units_path.stat().st_size,
                    "sha256": sha256_file(units_path),
                },
                "completed": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            }
        )
        if firing is not None:
            self.index["firing"] = {
                "rule": "share of control images with the latent above 0",
                "dead": int((firing == 0).sum()),
            }
        atomic_write_json(self.directory / INDEX, self.index)
        return self.index


class ControlStore:
    """A complete store opened for reading; `unit(u)` is one contiguous read of one unit."""

    def __init__(self, directory: Path, verify: bool = True) -> None:
        from safetensors import safe_open

        self.directory = Path(directory)
        index = _read_index(self.directory)
        if index is None:
            raise ControlsMissing(f"no control store in {self.directory}")
        if index.get("status") != "complete":
            raise ControlsMissing(
                f"the control store in {self.directory} is unfinished: rerun the same "
                "`nacosae controls` command to resume it"
            )
        if index.get("format_version") != FORMAT_VERSION:
            raise CorruptStore(
                f"{self.directory} uses store format {index.get('format_version')}, this nacosae "
                f"reads {FORMAT_VERSION}: rerun `nacosae controls` with --overwrite"
            )
        self.index = index
        for entry in (*index["shards"], index["units_file"]):
            _verify_file(self.directory, entry, full=verify)
        try:
            self._units = safe_open(str(self.directory / UNITS), framework="pt")
            self._slice = self._units.get_slice("activations")
        except Exception as exc:  # noqa: BLE001 - the reader's errors vary by damage
            raise CorruptStore(
                f"{self.directory / UNITS} is unreadable: rerun with --overwrite"
            ) from exc

    @property
    def n_units(self) -> int:
        return int(self.index["n_units"])

    @property
    def n_images(self) -> int:
        return int(self.index["n_images"])

    @property
    def classes(self) -> list[dict[str, Any]]:
        return self.index["classes"]

    def check_unit(self, u: int) -> None:
        """NeuronOutOfRange, naming the valid ids, unless the layer has unit `u`."""
        from nacosae.errors import NeuronOutOfRange

        if not 0 <= u < self.n_units:
            raise NeuronOutOfRange(
                f"unit {u} is outside layer {self.index['layer']} of {self.index['model']}: "
                f"valid ids are 0 to {self.n_units - 1}"
            )

    def unit(self, u: int) -> torch.Tensor:
        """All control activations of unit `u`, `[images]`, in row order."""
        self.check_unit(u)
        return self._slice[u]

    def class_means(self) -> torch.Tensor:
        return self._units.get_tensor("class_means")

    def firing_rates(self) -> torch.Tensor | None:
        """Each SAE latent's share of control images above 0 (None: not a store of latents,
        or one built before firing rates were recorded)."""
        if "firing_rate" not in self._units.keys():
            return None
        return self._units.get_tensor("firing_rate")

    def image_major(self) -> torch.Tensor:
        """All activations `[images, units]`, concatenated from the shards."""
        import torch
        from safetensors.torch import load_file

        return torch.cat(
            [
                load_file(str(self.directory / e["file"]))["activations"]
                for e in self.index["shards"]
            ]
        )


def list_stores(controls_root: Path) -> list[dict[str, Any]]:
    """Summaries of every store under `controls_root` (complete or not)."""
    rows = []
    for index_path in sorted(Path(controls_root).glob("*/*/" + INDEX)):
        directory = index_path.parent
        try:
            index = _read_index(directory) or {}
        except CorruptStore:
            index = {"status": "corrupt"}
        size = sum(p.stat().st_size for p in directory.glob("*.safetensors"))
        rows.append(
            {
                "model": index.get("model", directory.parent.name),
                "layer": directory.name if "@" in directory.name else index.get("layer"),
                "units": index.get("n_units"),
                "images": index.get("n_images"),
                "dtype": index.get("dtype"),
                "status": index.get("status"),
                "bytes": size,
                "path": str(directory),
            }
        )
    return rows
