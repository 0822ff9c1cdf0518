"""Which units a run explains: ids, ranges, lists, files, or CoSy's random sample."""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from pathlib import Path

from nacosae.errors import NacosaeError, NeuronOutOfRange

RANGE = re.compile(r"^(\d+):(\d+)(?::(\d+))?$")


def parse_spec(
    spec: str, n_units: int, seed: int, firing: Sequence[float] | None = None
) -> list[int]:
    """'12', '0:100', '0:100:5', '1,5,9', 'random:50' (CoSy: random.seed(seed) then
    random.sample(range(units), 50)), and for SAE latents (`firing`: each one's firing rate on
    the controls) 'alive:50' (a seeded sample of latents that fire) and 'top-firing:50' (the
    latents that fire most often), or a mix separated by commas."""
    chosen: list[int] = []
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        if part.startswith(("alive:", "top-firing:")):
            chosen.extend(_by_firing(part, firing, seed))
        elif part.startswith("random:"):
            count = part.removeprefix("random:")
            if not count.isdigit() or int(count) < 1:
                raise NacosaeError(f"bad neuron selection {part!r}: use random:N with N >= 1")
            if int(count) > n_units:
                raise NeuronOutOfRange(f"cannot sample {count} of the layer's {n_units} units")
            chosen.extend(random.Random(seed).sample(range(n_units), int(count)))
        elif match := RANGE.match(part):
            start, stop, step = (int(g) if g else None for g in match.groups())
            if step == 0:
                raise NacosaeError(f"neuron range {part!r} has step 0: use a step of 1 or more")
            if stop <= start:
                raise NacosaeError(
                    f"neuron range {part!r} is empty: write start:stop with stop above start "
                    f"(e.g. {stop}:{start + 1})"
                )
            if stop > n_units:  # before expanding it: a typo must not fill the memory
                raise NeuronOutOfRange(
                    f"neuron range {part!r} goes past the layer's {n_units} units: valid ids are "
                    f"0 to {n_units - 1}"
                )
            chosen.extend(range(start, stop, step or 1))
        elif part.isdigit():
            chosen.append(int(part))
        elif part.lstrip("-").isdigit():
            raise NeuronOutOfRange(f"neuron ids start at 0: {part} is not a unit")
        else:
            raise NacosaeError(
                f"bad neuron selection {part!r}: use ids (12), ranges (0:100), lists (1,5,9) or "
                "random:N"
            )
    return chosen


def _by_firing(part: str, firing: Sequence[float] | None, seed: int) -> list[int]:
    kind, _, count = part.partition(":")
    if not count.isdigit() or int(count) < 1:
        raise NacosaeError(f"bad neuron selection {part!r}: use {kind}:N with N >= 1")
    if firing is None:
        raise NacosaeError(
            f"{kind}:N picks SAE latents by how often they fire: give --sae, with a store built "
            "by this nacosae (`controls --sae ... --overwrite` records the firing rates)"
        )
    alive = [i for i, rate in enumerate(firing) if rate > 0]
    if int(count) > len(alive):
        raise NeuronOutOfRange(
            f"{part}: only {len(alive)} of the {len(firing)} latents fire on the control set"
        )
    if kind == "alive":
        return random.Random(seed).sample(alive, int(count))
    return sorted(alive, key=lambda i: (-firing[i], i))[: int(count)]


def read_neurons_file(path: Path) -> str:
    """A file of ids/ranges separated by commas, spaces or lines; '#' starts a comment."""
    if not Path(path).is_file():
        raise NacosaeError(f"--neurons-file {path} does not exist")
    lines = [line.split("#", 1)[0] for line in Path(path).read_text().splitlines()]
    return ",".join(token for line in lines for token in re.split(r"[\s,]+", line) if token)


def resolve(
    specs: list[str],
    n_units: int,
    seed: int,
    where: str,
    firing: Sequence[float] | None = None,
) -> list[int]:
    """All selections, de-duplicated in order, checked against the layer's size."""
    neurons = list(
        dict.fromkeys(n for spec in specs for n in parse_spec(spec, n_units, seed, firing))
    )
    if not neurons:
        raise NacosaeError("no neuron selected: pass --neuron-id, --neurons or --neurons-file")
    bad = [n for n in neurons if not 0 <= n < n_units]
    if bad:
        raise NeuronOutOfRange(
            f"neuron {bad[0]} is outside {where}: valid ids are 0 to {n_units - 1}"
        )
    return neurons
