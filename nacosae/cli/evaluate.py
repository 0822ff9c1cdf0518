"""`nacosae evaluate` (held-out CoSy scores, comparison, novelty) and `nacosae top-images`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import typer

from nacosae import progress
from nacosae.cli.given import options_given
from nacosae.cli.ray_options import RayOption, RayWorkersOption
from nacosae.cli.unit_options import (
    LatentPoolingOption,
    SaeOption,
    TokenPoolingOption,
    sae_layer,
)
from nacosae.distributed.cluster import check_ray_options
from nacosae.errors import NacosaeError
from nacosae.evaluation.job import COSY_IMAGES, COSY_PROMPT, COSY_SEED, COSY_T2I, SUMMARISED
from nacosae.evaluation.novelty import DEFAULT_THRESHOLD
from nacosae.models.concept_images import MIN_IMAGES
from nacosae.models.downloads import DEFAULT_EMBEDDER


def evaluate(
    context: typer.Context,
    files: Annotated[
        list[Path] | None,
        typer.Argument(
            help="Explanation CSVs (or a run directory with --top-k); with --compare, "
            "evaluation CSVs; with --novelty, explanation CSVs.",
            show_default=False,
        ),
    ] = None,
    explanations: Annotated[
        Path | None,
        typer.Option(help="Explanations: a CSV with neuron and concept columns, or a run dir."),
    ] = None,
    model: Annotated[str, typer.Option(help="Explained model (as for controls).")] = "resnet18",
    layer: Annotated[str, typer.Option(help="Layer module path.")] = "avgpool",
    weights: Annotated[str, typer.Option(help="Weights the control store was built with.")] = (
        "default"
    ),
    token_pooling: TokenPoolingOption = "cls",
    sae: SaeOption = None,
    latent_pooling: LatentPoolingOption = "auto",
    t2i_model: Annotated[str, typer.Option(help="Text-to-image model (CoSy: SDXL base).")] = (
        COSY_T2I
    ),
    num_img: Annotated[int, typer.Option(help="Images per concept.", min=MIN_IMAGES)] = COSY_IMAGES,
    image_prompt: Annotated[str, typer.Option(help="Prompt with {concept}.")] = COSY_PROMPT,
    seed: Annotated[int, typer.Option(help="Seed of the one noise generator.")] = COSY_SEED,
    num_inf_steps: Annotated[
        int | None, typer.Option(help="Diffusion steps \\[default: the model's own].", min=1)
    ] = None,
    guidance_scale: Annotated[
        float | None, typer.Option(help="Guidance \\[default: the model's own].")
    ] = None,
    controls: Annotated[
        Path | None,
        typer.Option(help="Another control store folder of the model/layer \\[default: its own]."),
    ] = None,
    images: Annotated[
        Path | None,
        typer.Option(
            help="Score these images instead of rendering: DIR/<concept>/ (with explanations) "
            "or DIR/<neuron>/<concept>/.",
            show_default=False,
        ),
    ] = None,
    top_k: Annotated[
        int | None,
        typer.Option(help="From a run directory: the K best distinct concepts.", min=1),
    ] = None,
    t2i_batch: Annotated[
        int | None,
        typer.Option(
            help="Images per text-to-image call \\[default: the memory plan's; 8 on a CPU].",
            show_default=False,
            min=1,
        ),
    ] = None,
    device: Annotated[str, typer.Option(help="auto, cuda, cuda:N, mps or cpu.")] = "auto",
    ray: RayOption = None,
    ray_workers: RayWorkersOption = None,
    out: Annotated[
        Path | None,
        typer.Option(
            help="Output folder \\[default: SAVE_DIR/evaluations/<name>].", show_default=False
        ),
    ] = None,
    compare: Annotated[
        bool, typer.Option(help="Compare methods given as evaluation CSVs.", metavar="")
    ] = False,
    novelty: Annotated[
        bool, typer.Option(help="Share of concepts no vocabulary entry matches.", metavar="")
    ] = False,
    vocabulary: Annotated[
        Path | None,
        typer.Option(
            help="One concept a line \\[default: the ImageNet-1k class names].", show_default=False
        ),
    ] = None,
    threshold: Annotated[
        float, typer.Option(help="Similarity that counts as a match (README: why 0.75).")
    ] = DEFAULT_THRESHOLD,
    embedder: Annotated[
        str, typer.Option(help="Sentence embedder for --novelty (id or folder).")
    ] = DEFAULT_EMBEDDER,
    preset: Annotated[
        str | None,
        typer.Option(
            help="smoke: the tiny offline models, as for explain.",
            show_default=False,
            metavar="<smoke>",
        ),
    ] = None,
) -> None:
    """Score explanations on fresh images (CoSy), compare methods, or measure novelty."""
    from nacosae.config import settings

    paths = list(files or []) + ([explanations] if explanations else [])
    config = settings()
    context.params["layer"] = sae_layer(context, model, layer, sae)
    if compare:
        _compare(paths, out or config.save_dir / "evaluations" / "comparison")
        return
    if novelty:
        _novelty(paths, vocabulary, threshold, embedder, out)
        return
    if len(paths) > 1 or (not paths and images is None):
        raise typer.BadParameter(
            "give one explanations CSV or run directory (or --compare / --novelty)",
            param_hint="--explanations",
        )
    try:
        check_ray_options(ray, ray_workers)
    except NacosaeError as exc:
        raise typer.BadParameter(str(exc), param_hint="--ray-workers") from None
    if preset not in (None, "smoke"):
        raise typer.BadParameter(f"{preset!r} is not one of smoke", param_hint="--preset")
    params = dict(context.params)
    controls_root = config.controls_dir
    if preset == "smoke":
        from nacosae.models.cache import shared_cache
        from nacosae.presets import smoke_evaluation

        given = options_given(context)
        controls_root = smoke_evaluation(params, given, config.nacosae_home, shared_cache())
    if images is not None:
        _images(params, images, paths[0] if paths else None, controls_root, config, out)
        return
    request = _request(params, paths[0], controls_root, out, config.save_dir)
    _run(request)


def _images(
    params: dict[str, Any],
    root: Path,
    source: Path | None,
    controls_root: Path,
    config: Any,
    out: Path | None,
) -> None:
    """`evaluate --images DIR [EXPLANATIONS]`: the given images scored against the controls."""
    from nacosae.evaluation.given_images import evaluate_images
    from nacosae.models.cache import shared_cache

    name = root.expanduser().resolve().name
    if out is None:
        out = config.save_dir / "evaluations" / f"images-{name}-{params['model']}-{params['layer']}"
    request = _request(params, source, controls_root, out, config.save_dir)
    result = evaluate_images(request, root, shared_cache())
    _show(result, f"images in {root}")


def _request(
    params: dict[str, Any],
    source: Path | None,
    controls_root: Path,
    out: Path | None,
    save_dir: Path,
) -> Any:
    from nacosae.evaluation.job import EvaluateRequest

    if source is None:
        name = "images"
    else:
        stem = source.stem if source.is_file() else source.name
        name = f"{stem}-{params['model']}-{params['layer']}"
    if out is None and source is not None and source.is_dir():
        out = source / "evaluation"  # beside the run: report and dashboard show it
    return EvaluateRequest(
        explanations=source,
        model=params["model"],
        layer=params["layer"],
        controls_root=controls_root,
        out=out or save_dir / "evaluations" / name.replace("/", "--").replace(":", "--"),
        weights=params["weights"],
        token_pooling=params["token_pooling"],
        sae=str(params["sae"]) if params["sae"] else None,
        latent_pooling=params["latent_pooling"],
        t2i_model=params["t2i_model"],
        num_img=params["num_img"],
        image_prompt=params["image_prompt"],
        seed=params["seed"],
        num_inf_steps=params["num_inf_steps"],
        guidance_scale=params["guidance_scale"],
        controls=params["controls"],
        top_k=params["top_k"],
        t2i_batch=params["t2i_batch"],
        device=params["device"],
        ray=params["ray"],
        ray_workers=params["ray_workers"],
    )


def _run(request: Any) -> None:
    from nacosae.evaluation.job import evaluate as run_evaluation
    from nacosae.models.cache import shared_cache

    result = run_evaluation(request, shared_cache())
    _show(result, str(request.explanations))
    counts = result.summary["counts"]
    progress.info(
        f"{result.summary['distinct_concepts']} distinct concepts: {counts['concepts_rendered']} "
        f"rendered ({counts['images_rendered']} images), {counts['cache_hits']} from the cache; "
        f"{counts['vision_forward_passes']} vision forward passes"
    )
    for note in result.notes:
        progress.info(f"note: {note}")
    progress.info(f"written: {result.out / 'evaluation.csv'}, {result.out / 'summary.json'}")


def _show(result: Any, what: str) -> None:
    """The evaluation's table of metric summaries."""
    from rich.table import Table

    summary = result.summary
    table = Table(title=f"evaluation of {what} ({len(result.rows)} rows)")
    for column in ("metric", "mean", "std", "median", "95% CI of the mean", "n"):
        table.add_column(column)
    for metric in SUMMARISED:
        s = summary.get(metric, {})
        if s.get("n"):
            low, high = s["mean_ci95"]
            table.add_row(
                metric, f"{s['mean']:.4f}", f"{s['std']:.4f}", f"{s['median']:.4f}",
                f"{low:.4f} .. {high:.4f}", str(s["n"]),
            )  # fmt: skip
    progress.result(table)
    if "counts" not in summary:  # given images: the notes and files are all there is to say
        for note in result.notes:
            progress.info(f"note: {note}")
        progress.info(f"written: {result.out / 'evaluation.csv'}, {result.out / 'summary.json'}")


def _rows_out(rows: list[dict[str, Any]], format: str) -> None:
    """Rows as CSV or JSON on stdout (no table folding: paths whole)."""
    import csv
    import io
    import json

    if format == "json":
        typer.echo(json.dumps(rows, indent=2))
        return
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]) if rows else [], lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    typer.echo(buffer.getvalue(), nl=False)


def _compare(paths: list[Path], out: Path) -> None:
    from rich.table import Table

    from nacosae.evaluation.compare import as_json, box_plot, compare
    from nacosae.store.atomic import atomic_write_json

    results, methods = compare(paths)
    table = Table(title="paired comparison on shared neurons")
    for column in ("A", "B", "metric", "n", "mean A", "mean B", "A - B", "test", "p"):
        table.add_column(column, overflow="fold")
    for r in results:
        table.add_row(
            r.method_a, r.method_b, r.metric, str(r.n), f"{r.mean_a:.4f}", f"{r.mean_b:.4f}",
            f"{r.mean_difference:+.4f}", r.test, f"{r.p:.4g}",
        )  # fmt: skip
    progress.result(table)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "comparison.json", as_json(results))
    box_plot(methods, out / "comparison.png")
    progress.info(f"written: {out / 'comparison.json'}, {out / 'comparison.png'}")


def _novelty(
    paths: list[Path], vocabulary: Path | None, threshold: float, embedder: str, out: Path | None
) -> None:
    from rich.table import Table

    from nacosae.evaluation.explanations import read_csv
    from nacosae.evaluation.novelty import novelty as novelty_rows
    from nacosae.evaluation.novelty import read_vocabulary, to_csv
    from nacosae.models.cache import ModelHandle, ModelSpec, shared_cache
    from nacosae.models.embedder import embedding_function, load_embedder
    from nacosae.store.atomic import atomic_write_text

    if not paths:
        raise NacosaeError("--novelty needs explanation CSVs")
    entries, vocabulary_name = read_vocabulary(vocabulary)
    handle = ModelHandle(shared_cache(), ModelSpec("embedder", embedder), load_embedder)
    embed = embedding_function(handle)
    for path in paths:
        found = read_csv(path, None)
        concepts = [(e.neuron, e.concept) for e in found.explanations]
        rows = novelty_rows(concepts, entries, embed, threshold)
        novel = sum(r.novel for r in rows)
        table = Table(
            title=f"{path.name}: {novel} of {len(rows)} concepts ({novel / len(rows):.0%}) "
            f"match no entry of {vocabulary_name} (similarity < {threshold})"
        )
        for column in ("neuron", "concept", "nearest entry", "similarity", "new"):
            table.add_column(column)
        for r in rows:
            new = "yes" if r.novel else ""
            table.add_row(str(r.neuron), r.concept, r.nearest, f"{r.similarity:.3f}", new)
        progress.result(table)
        if out is not None:
            out.mkdir(parents=True, exist_ok=True)
            atomic_write_text(out / f"novelty-{path.stem}.csv", to_csv(rows))
            progress.info(f"written: {out / f'novelty-{path.stem}.csv'}")


def top_images(
    context: typer.Context,
    model: Annotated[str, typer.Option(help="Explained model (as for controls).")] = "resnet18",
    layer: Annotated[str, typer.Option(help="Layer module path.")] = "avgpool",
    neuron_id: Annotated[int, typer.Option(help="The unit.")] = 0,
    k: Annotated[int, typer.Option(help="How many images.")] = 16,
    lowest: Annotated[
        bool, typer.Option(help="The images that drive it least.", metavar="")
    ] = False,
    classes: Annotated[
        bool,
        typer.Option(
            help="Control classes by the unit's class mean instead of images (where the "
            "search's initial history starts).",
            metavar="",
        ),
    ] = False,
    token_pooling: TokenPoolingOption = "cls",
    sae: SaeOption = None,
    latent_pooling: LatentPoolingOption = "auto",
    format: Annotated[
        Literal["table", "csv", "json"],
        typer.Option("--format", help="A table, or CSV / JSON rows with full paths."),
    ] = "table",
) -> None:
    """The control images (or classes) that activate a unit most (or least), from its store."""
    from dataclasses import asdict

    from rich.table import Table

    from nacosae.config import settings
    from nacosae.controls import open_controls
    from nacosae.evaluation.top_images import top_classes
    from nacosae.evaluation.top_images import top_images as find
    from nacosae.models.units import make_readout

    if k < 1:
        raise typer.BadParameter("must be at least 1", param_hint="--k")
    layer = sae_layer(context, model, layer, sae)
    readout = make_readout(token_pooling, sae, latent_pooling)  # type: ignore[arg-type]
    store = open_controls(settings().controls_dir, model, layer, readout)
    which = "least" if lowest else "most"
    if classes:
        ranked = top_classes(store, neuron_id, k, lowest)
        if format != "table":
            _rows_out([asdict(c) for c in ranked], format)
            return
        table = Table(
            title=f"control classes that drive unit {neuron_id} of {model} {layer} {which}"
        )
        for column in ("rank", "class mean", "class", "folder", "images"):
            table.add_column(column, overflow="fold")
        for c in ranked:
            table.add_row(str(c.rank), f"{c.mean:.4f}", c.concept, c.class_folder, str(c.images))
        progress.result(table)
        return
    found = find(store, neuron_id, k, lowest)
    if format != "table":
        _rows_out([{**asdict(i), "path": str(i.path) if i.path else None} for i in found], format)
        return
    table = Table(title=f"control images that drive unit {neuron_id} of {model} {layer} {which}")
    for column in ("rank", "activation", "class", "image"):
        table.add_column(column, overflow="fold")
    missing = "imported, no image files" if store.index.get("imported_from") else "dataset moved"
    for image in found:
        path = str(image.path) if image.path else f"(row {image.row}; {missing})"
        table.add_row(str(image.rank), f"{image.activation:.4f}", image.concept, path)
    progress.result(table)
