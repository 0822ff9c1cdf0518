"""Which units a run explains: ids, ranges, lists, files, or CoSy's random sample."""

from __future__ import annotations

import random
import re
from pathlib import Path

from nacosae.errors import NacosaeError, NeuronOutOfRange

RANGE = re.compile(r"^(\d+):(\d+)(?::(\d+))?$")


def parse_spec(spec: str, n_units: int, seed: int) -> list[int]:
    """'12', '0:100', '0:100:5', '1,5,9', 'random:50' (CoSy: random.seed(seed) then
    random.sample(range(units), 50)), or a mix separated by commas."""
    chosen: list[int] = []
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        if part.startswith("random:"):
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


def read_neurons_file(path: Path) -> str:
    """A file of ids/ranges separated by commas, spaces or lines; '#' starts a comment."""
    if not Path(path).is_file():
        raise NacosaeError(f"--neurons-file {path} does not exist")
    lines = [line.split("#", 1)[0] for line in Path(path).read_text().splitlines()]
    return ",".join(token for line in lines for token in re.split(r"[\s,]+", line) if token)


def resolve(specs: list[str], n_units: int, seed: int, where: str) -> list[int]:
    """All selections, de-duplicated in order, checked against the layer's size."""
    neurons = list(dict.fromkeys(n for spec in specs for n in parse_spec(spec, n_units, seed)))
    if not neurons:
        raise NacosaeError("no neuron selected: pass --neuron-id, --neurons or --neurons-file")
    bad = [n for n in neurons if not 0 <= n < n_units]
    if bad:
        raise NeuronOutOfRange(
            f"neuron {bad[0]} is outside {where}: valid ids are 0 to {n_units - 1}"
        )
    return neurons
