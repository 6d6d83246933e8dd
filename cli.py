"""The ``al-loop`` command line: thin typer commands that parse options and call the rooms."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

from al_loop import logs
from al_loop.config import WORKSPACE_ENV, open_workspace
from al_loop.gate import describe_change, provisional, too_small_to_judge
from al_loop.jobs import JobLost
from al_loop.model.training import TrainingCancelled
from al_loop.workspace import init_workspace, open_store
from db.queries import status_summary
from db.session import SchemaError, Store, upgrade

if TYPE_CHECKING:
    from al_loop.config import Workspace
    from al_loop.ingest import IngestResult

app = typer.Typer(help="Active-learning annotation loop for glacier mapping.", no_args_is_help=True)
_log_level: str | None = None  # --log-level, which beats the workspace's logging.level
ingest_app = typer.Typer(help="Bring scenes, slices and labels into the store.", no_args_is_help=True)
db_app = typer.Typer(help="Database schema.", no_args_is_help=True)
app.add_typer(ingest_app, name="ingest")
app.add_typer(db_app, name="db")

console = Console()
errors = Console(stderr=True)

WorkspaceOption = Annotated[
    Path | None,
    typer.Option("--workspace", "-w", envvar=WORKSPACE_ENV, help="Workspace folder (default: current folder)."),
]
QuietOption = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")]


@app.callback()
def main(
    log_level: Annotated[
        str | None, typer.Option("--log-level", help="debug, info, warning or error (config logging.level).")
    ] = None,
) -> None:
    """Active-learning annotation loop for glacier mapping."""
    global _log_level
    with _clear_errors():
        _log_level = log_level
        logs.configure(log_level or "info")


@contextmanager
def _clear_errors() -> Iterator[None]:
    """Input problems end the command with one clear message and exit code 2, no traceback."""
    try:
        yield
    except (ValueError, LookupError, SchemaError, FileNotFoundError, TrainingCancelled, JobLost) as exc:
        errors.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        sys.exit(2)


@contextmanager
def _store(workspace: Path | None) -> Iterator[tuple[Workspace, Store]]:
    ws = open_workspace(workspace)
    if _log_level is None:
        logs.configure(ws.config.logging.level)
    store = open_store(ws)
    try:
        yield ws, store
    finally:
        store.dispose()


@app.command()
def init(
    directory: Annotated[Path | None, typer.Argument(help="Workspace folder to create.")] = None,
    workspace: WorkspaceOption = None,
    database_url: Annotated[
        str | None, typer.Option(help="SQLAlchemy URL of the database (default: SQLite in the workspace).")
    ] = None,
    profile: Annotated[
        str | None, typer.Option(help="Size patches, model and training for 'cpu' or 'cuda' (default: cuda "
                                      "when a GPU is seen).")
    ] = None,
) -> None:
    """Create a workspace (configuration, database) or bring an existing one up to date."""
    from al_loop.config import CONFIG_FILE, PROFILES

    with _clear_errors():
        if profile is not None and profile not in PROFILES:
            raise ValueError(f"--profile must be one of {', '.join(PROFILES)}, found {profile!r}")
        folder = open_workspace(directory or workspace).root
        existed = (folder / CONFIG_FILE).exists()
        ws = init_workspace(folder, database_url, profile)
        console.print(f"workspace ready: {ws.root} (database: {_safe_url(ws.database_url)})")
        if existed and profile:
            console.print(f"[yellow]note:[/] {CONFIG_FILE} exists and was kept: --profile sizes a new workspace only")


@db_app.command("upgrade")
def db_upgrade(workspace: WorkspaceOption = None) -> None:
    """Apply database migrations up to this al-loop's schema."""
    from db.session import Store

    with _clear_errors():
        ws = open_workspace(workspace)
        store = Store(ws.database_url)
        try:
            head = upgrade(store.engine)
        finally:
            store.dispose()
        console.print(f"database at schema revision {head}")


@ingest_app.command("scene")
def ingest_scene(
    path: Annotated[
        Path,
        typer.Argument(help="An HKH fused tile (15 named bands), a USGS Level-1 folder, or a "
                            "multi-band file with --bands."),
    ],
    dem: Annotated[Path | None, typer.Option(help="DEM on any grid and CRS (Level-1 folders and band stacks).")] = None,
    bands: Annotated[
        str | None, typer.Option(help="Band mapping of a multi-band file, in file order, with the "
                                      "sensor's band names, e.g. "
                                  "B1,B2,B3,B4,B5,B7 (ETM+, TM) or B2,B3,B4,B5,B6,B7 (OLI).")
    ] = None,
    sensor: Annotated[
        str | None, typer.Option(help="Sensor when the file names cannot tell it (renamed bands, band stacks): LT05 "
                                      "(Landsat 5 TM), "
                    "LE07 (Landsat 7 ETM+, the default for stacks), LC08 or LC09 (Landsat 8/9 OLI).")
    ] = None,
    date: Annotated[
        str | None, typer.Option(help="Acquisition date YYYY-MM-DD when the file names cannot tell it.")
    ] = None,
    workspace: WorkspaceOption = None,
    quiet: QuietOption = False,
) -> None:
    """Ingest a scene and cut it into patches."""
    import datetime as dt

    from al_loop.ingest import ingest_hkh_tile, ingest_landsat

    with _clear_errors(), _store(workspace) as (ws, store):
        try:
            acquired = dt.date.fromisoformat(date) if date else None
        except ValueError:
            raise ValueError(f"--date {date!r}: expected YYYY-MM-DD") from None
        if path.is_dir() or bands:
            mapping = [b.strip() for b in bands.split(",")] if bands else None
            result = ingest_landsat(ws, store, path, dem=dem, band_mapping=mapping, sensor=sensor, acquired=acquired,
                                    quiet=quiet)
        elif dem is not None or sensor or date:
            used = ", ".join(o for o, v in (("--dem", dem), ("--sensor", sensor), ("--date", date)) if v)
            raise ValueError(f"{path}: an HKH fused tile names its bands, sensor and date, and has "
                             "elevation and slope; "
                             f"{used} is for Level-1 folders and band stacks")
        else:
            result = ingest_hkh_tile(ws, store, path, quiet=quiet)
        _report(result)


@ingest_app.command("slices")
def ingest_slices(
    folder: Annotated[Path, typer.Argument(help="An HKH slices/ folder (slice_*_img_*.npy, slice_*_mask_*.npy).")],
    footprints: Annotated[
        Path | None, typer.Option(help="Footprint GeoJSON (default: slices.geojson beside the folder).")
    ] = None,
    mask_convention: Annotated[
        str | None, typer.Option(help="'slices' (glacier, clean, debris) or 'splits' (one-hot clean, debris, "
                                      "background); detected if omitted.")
    ] = None,
    workspace: WorkspaceOption = None,
    quiet: QuietOption = False,
) -> None:
    """Ingest the HKH slices layout: each image is a patch, each mask a label."""
    from al_loop.ingest import ingest_slices as ingest

    with _clear_errors(), _store(workspace) as (ws, store):
        _report(ingest(ws, store, folder, footprints=footprints, convention=mask_convention, quiet=quiet))


def _pairs(items: list[str], option: str) -> dict[str, str]:
    pairs = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key or not value:
            raise ValueError(f"{option} {item!r}: expected VALUE=CLASS, e.g. {option} D=debris")
        pairs[key] = value
    return pairs


@ingest_app.command("labels")
def ingest_labels(
    path: Annotated[Path, typer.Argument(help="Vector labels (shapefile, GeoPackage, GeoJSON) or a label raster.")],
    attribute: Annotated[str | None, typer.Option(help="Attribute whose values map to classes.")] = None,
    map_: Annotated[
        list[str] | None,
        typer.Option(
            "--map",
            help="VALUE=CLASS (classes: background, clean_ice, debris, glacier, or unlabeled to "
            "ignore those pixels); repeat it. For rasters, the pixel value.",
        ),
    ] = None,
    default_class: Annotated[str, typer.Option(help="Class of every polygon when no attribute is given.")] = "glacier",
    scene: Annotated[
        list[int] | None, typer.Option(help="Scene id to label (repeat; default: every raster scene).")
    ] = None,
    workspace: WorkspaceOption = None,
    quiet: QuietOption = False,
) -> None:
    """Rasterise a label file onto the patches it covers (inventory labels)."""
    from al_loop.label_ingest import RASTER_SUFFIXES
    from al_loop.label_ingest import ingest_labels as ingest

    with _clear_errors(), _store(workspace) as (ws, store):
        pairs = _pairs(map_ or [], "--map")
        if path.suffix.lower() in RASTER_SUFFIXES:
            try:
                raster_values = {int(k): v for k, v in pairs.items()} or None
            except ValueError:
                raise ValueError(f"--map for a label raster takes integer pixel values, found {list(pairs)}") from None
            result = ingest(ws, store, path, scene_ids=scene, attribute=attribute, raster_values=raster_values,
                            quiet=quiet)
        else:
            result = ingest(
                ws, store, path, scene_ids=scene, attribute=attribute, mapping=pairs or None,
                default_class=default_class, quiet=quiet,
            )
    console.print(
        f"labels from {result.path.name}: {result.patches} patches "
        f"({result.created} new, {result.revised} revised, {result.unchanged} unchanged)"
    )
    counts = result.file_counts
    if counts:
        console.print(
            f"  features {counts.get('features', 0)}, repaired {counts.get('repaired', 0)}, "
            f"empty skipped {counts.get('empty', 0)}, unmapped {counts.get('unmapped', {})}"
        )


@ingest_app.command("synthetic")
def ingest_synthetic(
    workspace: WorkspaceOption = None,
    size: Annotated[int | None, typer.Option(help="Scene side in pixels (config synthetic.size).")] = None,
    seed: Annotated[
        int | None,
        typer.Option(help="Generator seed (config synthetic.seed; with --unlabelled one more: another place)."),
    ] = None,
    unlabelled: Annotated[
        bool, typer.Option("--unlabelled", help="Without its labels: a pool for next-round.")
    ] = False,
    quiet: QuietOption = False,
) -> None:
    """Generate a built-in synthetic scene (with exact labels, or none) and ingest it."""
    from al_loop.ingest import ingest_synthetic_scene

    with _clear_errors(), _store(workspace) as (ws, store):
        size = size or ws.config.synthetic.size
        seed = ws.config.synthetic.seed + int(unlabelled) if seed is None else seed
        _report(ingest_synthetic_scene(ws, store, size=size, seed=seed, labelled=not unlabelled, quiet=quiet))


@app.command()
def status(workspace: WorkspaceOption = None) -> None:
    """What is in the store: scenes, patches, labels, rounds, models."""
    with _clear_errors(), _store(workspace) as (ws, store):
        with store.session() as session:
            summary = status_summary(session)
    console.print(f"workspace {ws.root}  database {_safe_url(ws.database_url)}")
    scenes = Table(title="scenes")
    for column in ("id", "name", "kind", "size", "channels", "patches", "valid", "low valid"):
        scenes.add_column(column, justify="left" if column in ("name", "kind") else "right", overflow="fold")
    for s in summary["scenes"]:
        scenes.add_row(
            str(s["id"]), s["name"], s["kind"], s["size"], str(s["channels"]),
            str(s["patches"]), f"{s['mean_valid']:.1%}", str(s["low_valid"]),
        )
    console.print(scenes)
    labels = Table(title="accepted labels (pixels by class)")
    for column in ("source", "labels", "patches", "background", "clean ice", "debris", "glacier, type unknown"):
        labels.add_column(column, justify="left" if column == "source" else "right", overflow="fold")
    for row in summary["labels"]:
        labels.add_row(
            row["source"], str(row["labels"]), str(row["patches"]),
            *(f"{row[k]:,}" for k in ("background", "clean_ice", "debris", "glacier")),
        )
    console.print(labels)
    if summary["ignored"]:
        console.print("  marked by experts as unlabeled (ignored by training and metrics): "
                      + ", ".join(f"{key} {n:,} px" for key, n in sorted(summary["ignored"].items())))
    splits = Table(title="validation: labelled patches by split (the model never trains on validation)")
    for column in ("split", "source", "patches", "background", "clean ice", "debris", "glacier, type unknown"):
        splits.add_column(column, justify="left" if column in ("split", "source") else "right")
    for row in summary["splits"]:
        name = {"val": "validation", "train": "training"}.get(row["split"], row["split"])
        splits.add_row(name, row["source"], str(row["patches"]),
                       *(f"{row[k]:,}" for k in ("background", "clean_ice", "debris", "glacier")))
    console.print(splits)
    if summary["validation_reserved"]:
        console.print(f"  {summary['validation_reserved']} patch(es) handed out in open rounds will "
                      "validate once labelled")
    models = ", ".join(f"{n} {s}" for s, n in summary["models"].items()) or "none"
    jobs = ", ".join(f"{n} {s}" for s, n in summary["jobs"].items()) or "none"
    console.print(f"rounds: {summary['rounds']}   models: {models}   training jobs: {jobs}")
    for r in summary["open_rounds"]:
        console.print(f"  round {r['number']} open: {r['labelled']} of {r['patches']} patches labelled, "
                      f"{r['patches'] - r['labelled']} to go")
    if summary["newest"]:
        newest = summary["newest"]
        console.print(f"champion: {summary['champion'] or 'none'}; newest version {newest['name']} "
                      f"({newest['status']}): "
                      f"{newest['gate']}", highlight=False)
        console.print(f"  last training: {describe_change(newest['name'], newest['metrics'])}", highlight=False)
    weak = provisional(summary["champion_metrics"]) if summary["champion"] else None
    fraction = ws.config.training.validation_fraction
    small = too_small_to_judge(summary["champion_metrics"], fraction) if summary["champion"] else None
    if small:
        console.print(f"  [yellow]validation too small to judge: {small}[/yellow]", highlight=False)
    if weak:
        console.print(f"  [yellow]champion {summary['champion']} is provisional ({weak}): its pre-labels are a "
                      "rough guess; label more patches and retrain[/yellow]")


models_app = typer.Typer(help="The model registry.", invoke_without_command=True)
app.add_typer(models_app, name="models")


@app.command()
def train(
    from_: Annotated[
        str | None, typer.Option("--from", help="Fine-tune from this model version (warm start, all labels replayed).")
    ] = None,
    resume: Annotated[
        int | None, typer.Option(help="Resume a cancelled or interrupted training job from its last epoch.")
    ] = None,
    cancel: Annotated[
        int | None, typer.Option(help="Ask running training job N to stop after its current epoch.")
    ] = None,
    workspace: WorkspaceOption = None,
    quiet: QuietOption = False,
) -> None:
    """Train a model version on the accepted labels; promote it if it passes the gate."""
    from al_loop.gate import describe_baseline
    from al_loop.jobs import request_cancel
    from al_loop.training_run import run_training

    with _clear_errors(), _store(workspace) as (ws, store):
        if cancel is not None:
            request_cancel(store, cancel)
            console.print(f"job {cancel} will stop (a running one after its current epoch); "
                          f"resume it with --resume {cancel}")
            return
        if resume is not None and from_ is not None:
            raise ValueError("--resume N goes on with job N's own parent: leave out --from")
        report = run_training(ws, store, parent_name=from_, resume=resume, quiet=quiet)
    for note in report.notes:
        console.print(f"[yellow]note:[/] {note}")
    m = report.metrics
    kept = (f"best epoch {m['best_epoch']} of {m['epochs']}" if m.get("epoch_chosen_by_validation", True) else
            f"the last of {m['epochs']} epochs kept (no validation patch holds glacier to choose an epoch by)")
    console.print(f"model {report.version} ({report.status}) from job {report.job_id}: {m['train_patches']} training / "
                  f"{m['val_patches']} validation patches, {kept}")
    balance = report.metrics["class_balance"]
    console.print(f"class weights ({balance['source']}): " + ", ".join(
        f"{name} {weight:g} ({balance['shares'][name]:.1%} of labelled pixels)"
        for name, weight in balance["weights"].items()), highlight=False)
    _metrics_table(report.metrics["val"], f"validation metrics of {report.version}")
    if report.metrics.get("baseline"):
        console.print(describe_baseline(report.metrics["baseline"]), highlight=False)
    console.print(f"promotion gate: {report.gate}", highlight=False)


@app.command()
def evaluate(
    version: Annotated[str | None, typer.Argument(help="Model version (default: the champion).")] = None,
    split: Annotated[str, typer.Option(help="Labelled patches to evaluate on: val or train.")] = "val",
    workspace: WorkspaceOption = None,
) -> None:
    """Per-class IoU, precision, recall and F1 over the whole set; JSON and PNGs."""
    from al_loop.evaluation import evaluate_version

    with _clear_errors(), _store(workspace) as (ws, store):
        result = evaluate_version(ws, store, version, split)
    _metrics_table(result.metrics, f"{result.version} on {result.patches} {result.split} patches")
    for what, path in result.outputs.items():
        console.print(f"  {what}: {path}")


def _score(value: float | None) -> str:
    """A score for a table: n/a when undefined (a class absent from the labels)."""
    return "n/a" if value is None or value != value else f"{value:.3f}"


def _metrics_table(metrics: dict, title: str) -> None:
    from al_loop.model.metrics import INTERVAL_NOTE, iou_text

    table = Table(title=title, caption="n/a: no pixels of that class in the labels; glacier: clean ice and debris "
                                       f"together (also scores 'glacier, type unknown' labels); {INTERVAL_NOTE}")
    for column in ("class", "IoU (interval)", "precision", "recall", "F1", "pixels"):
        table.add_column(column, justify="left" if column == "class" else "right")
    for name, values in metrics.items():
        table.add_row(
            name, iou_text(values), *(_score(values[k]) for k in ("precision", "recall", "f1")),
            f"{int(values['support']):,}"
        )
    console.print(table)


@models_app.callback()
def models(ctx: typer.Context, workspace: WorkspaceOption = None) -> None:
    """List model versions, each scored on the current validation set (subcommands: promote, rollback)."""
    if ctx.invoked_subcommand is not None:
        return
    from al_loop.evaluation import current_validation_set, version_scores
    from al_loop.model.metrics import INTERVAL_NOTE, iou_text
    from db.queries import gate_summary
    from db.registry import versions

    with _clear_errors(), _store(workspace) as (ws, store):
        with store.session() as session:
            found = versions(session)
            labels = {v.id: len(v.labels) for v in found}
        vset = current_validation_set(ws, store)
        with console.status("scoring versions on the current validation set") as spinner:
            scores = version_scores(ws, store, found, vset, progress=spinner.update)
    sources = ", ".join(f"{n} {source}" for source, n in vset.sources().items()) or "none"
    table = Table(title=f"model versions, IoU on the current validation set (set {vset.id[:8]}: {len(vset.patches)} "
                        f"patches, by label source {sources})",
                  caption="n/a: no pixels of that class in validation; -: the version cannot run on it "
                          f"(a validation scene lacks one of its channels); {INTERVAL_NOTE}")
    for column in ("version", "status", "parent", "clean ice", "debris", "glacier", "labels", "channels", "gate, when "
                                                                                                          "trained"):
        table.add_column(column, overflow="fold")
    names: dict[int | None, str] = {v.id: v.name for v in found}
    for v in found:
        record = scores.get(v.name)
        iou = (lambda c: "-") if record is None else (lambda c: iou_text(record["val"].get(c)))  # noqa: E731, B023
        table.add_row(v.name, v.status, names.get(v.parent_id, "-"), iou("clean_ice"), iou("debris"), iou("glacier"),
                      str(labels[v.id]), str(len(v.channels)), gate_summary(v.metrics))
    console.print(table)


@models_app.command("promote")
def models_promote(version: str, workspace: WorkspaceOption = None) -> None:
    """Serve VERSION now, whatever the gate said."""
    from db.registry import promote
    from db.registry import version as find

    with _clear_errors(), _store(workspace) as (ws, store):
        with store.session() as session:
            previous = promote(session, find(session, version))
    console.print(f"{version} is the champion" + (f" (was {previous.name})" if previous else ""))


@models_app.command("rollback")
def models_rollback(version: str, workspace: WorkspaceOption = None) -> None:
    """Serve an earlier champion VERSION again."""
    from db.registry import rollback
    from db.registry import version as find

    with _clear_errors(), _store(workspace) as (ws, store):
        with store.session() as session:
            previous = rollback(session, find(session, version))
    console.print(f"rolled back to {version}" + (f" (was {previous.name})" if previous else ""))


@app.command()
def predict(
    scene: Annotated[int, typer.Argument(help="Scene id (see `al-loop status`).")],
    version: Annotated[str | None, typer.Option(help="Model version (default: the champion).")] = None,
    out: Annotated[Path | None, typer.Option(help="Output GeoTIFF (default: predictions/ in the workspace).")] = None,
    mc: Annotated[
        int | None, typer.Option(help="Monte Carlo samples (0: no uncertainty; default: model.mc_samples).")
    ] = None,
    workspace: WorkspaceOption = None,
) -> None:
    """Write class, probability and uncertainty maps of a scene, in its grid and CRS."""
    from al_loop.prediction import predict_scene_file

    with _clear_errors(), _store(workspace) as (ws, store):
        path = predict_scene_file(ws, store, scene, out, version, mc)
    console.print(f"prediction written: {path}")


@app.command()
def export(
    scenes: Annotated[
        list[int] | None, typer.Argument(help="Scene ids (al-loop status); default every raster scene.")
    ] = None,
    out: Annotated[
        Path | None, typer.Option("--out", help="Folder for the exports; default <workspace>/exports.")
    ] = None,
    wgs84: Annotated[
        bool, typer.Option("--wgs84", help="Polygons in WGS84 longitude/latitude instead of the scene's CRS.")
    ] = False,
    inventory: Annotated[
        Path | None,
        typer.Option(
            "--inventory",
            help="An outline inventory (RGI, GLIMS): each "
            "polygon gets the id of the glacier it lies in, and a per-glacier table.",
        ),
    ] = None,
    inventory_id: Annotated[
        str | None,
        typer.Option("--inventory-id", help="The inventory's id field (default: RGIId, GLIMSId, ... as found)."),
    ] = None,
    min_area: Annotated[
        float | None,
        typer.Option("--min-area", help="Minimum mapping unit in m² (default backend.min_mapping_unit_m2)."),
    ] = None,
    version: Annotated[
        str | None, typer.Option("--version", help="Model version for unlabelled pixels (default: the champion).")
    ] = None,
    glims: Annotated[
        bool, typer.Option("--glims", help="Also a GLIMS-style shapefile (WGS84; glac_bound and debris_cov polygons).")
    ] = False,
    workspace: WorkspaceOption = None,
) -> None:
    """Glacier outlines per scene: a GeoPackage of clean-ice, debris and glacier polygons (expert
    labels first, then inventories, then the model), the class mosaic as a Cloud-Optimized
    GeoTIFF, and with --inventory a per-glacier table."""
    from al_loop.export import export_scene
    from db.queries import raster_scene_ids

    with _clear_errors(), _store(workspace) as (ws, store):
        if not scenes:
            with store.session() as session:
                scenes = raster_scene_ids(session)
        for scene_id in scenes:
            result = export_scene(ws, store, scene_id, out or ws.root / "exports", wgs84=wgs84,
                                  inventory_path=inventory, inventory_id=inventory_id, min_area_m2=min_area,
                                  version_name=version, glims=glims)
            counts = ", ".join(f"{layer} {result.polygons[layer]} ({result.area_km2[layer]:.2f} km²)"
                               for layer in result.polygons)
            console.print(f"scene {scene_id} ({result.scene}): {counts}; model {result.model_version or 'none'}; "
                          f"{result.seconds:.1f} s", highlight=False)
            for path in (result.gpkg, result.mosaic, result.picture, result.table, result.glims):
                if path is not None:
                    console.print(f"  {path}", highlight=False)


@app.command()
def change(
    scenes: Annotated[
        list[int], typer.Argument(help="Scene ids of the same ground at different dates (al-loop status).")
    ],
    inventory: Annotated[
        Path, typer.Option("--inventory", help="The glacier outlines to measure in (RGI, GLIMS, ICIMOD).")
    ],
    inventory_id: Annotated[
        str | None,
        typer.Option("--inventory-id", help="The inventory's id field (default: RGIId, GLIMSId, ... as found)."),
    ] = None,
    min_valid: Annotated[
        float,
        typer.Option(
            "--min-valid",
            help="Share of a glacier's outline that must hold data "
            "for a date to count (Landsat 7 SLC-off gaps leave about 0.8).",
        ),
    ] = 0.7,
    out: Annotated[
        Path | None,
        typer.Option("--out", help="Folder for areas.csv, changes.csv and plots; default <workspace>/change."),
    ] = None,
    workspace: WorkspaceOption = None,
) -> None:
    """Glacier area per inventory glacier, class and date, and its change between dates with an
    uncertainty band (unsure model pixels, no data inside the outline); plots per glacier and region."""
    from al_loop.change import run

    if not 0 < min_valid <= 1:
        errors.print(f"[bold red]error:[/] --min-valid must be in (0, 1], found {min_valid}", highlight=False)
        raise typer.Exit(2)
    with _clear_errors(), _store(workspace) as (ws, store):
        rows, found, folder = run(ws, store, scenes, inventory, out or ws.root / "change", inventory_id, min_valid)
    flagged = sum(r.flagged for r in rows)
    console.print(
        f"{len({r.glacier for r in rows})} glaciers at {len({r.acquired for r in rows})} dates"
        + (f"; {flagged} glacier-dates flagged (under {min_valid:.0%} of the outline has data)" if flagged else ""),
        highlight=False,
    )
    for c in found:
        if c.glacier == "region":
            console.print(f"  region, {c.start} -> {c.end}: {c.delta_km2:+.3f} km² [{c.low_km2:+.3f}, "
                          f"{c.high_km2:+.3f}] "
                          f"over {c.glaciers} glaciers", highlight=False)
    console.print(f"  {folder / 'areas.csv'}\n  {folder / 'changes.csv'}\n  {folder / 'region.png'}", highlight=False)


@app.command("next-round")
def next_round(
    size: Annotated[int | None, typer.Option(help="Patches to choose (config sampling.round_size).")] = None,
    strategy: Annotated[
        str | None, typer.Option(help="random, entropy, margin, bald, debris, cloud, combined or balanced (config "
                                      "sampling.strategy).")
    ] = None,
    workspace: WorkspaceOption = None,
    quiet: QuietOption = False,
) -> None:
    """Score the pool with the champion, choose a diverse batch, record it and hand it out."""
    from al_loop.rounds import next_round as choose

    with _clear_errors(), _store(workspace) as (ws, store):
        result = choose(ws, store, size=size, strategy=strategy, quiet=quiet)
    for note in result.notes:
        console.print(f"[yellow]note:[/] {note}")
    table = Table(title=f"round {result.number}: {result.strategy}, model {result.model_version or 'none'} "
                        f"({result.scored} patches newly scored)")
    names = sorted({n for p in result.patches for n in p.components})
    for column in ("rank", "patch", "scene", "score", *names):
        table.add_column(column, justify="left" if column == "scene" else "right")
    for p in result.patches:
        table.add_row(
            str(p.rank),
            str(p.patch_id),
            p.scene,
            f"{p.score:.3f}",
            *(f"{p.components.get(n, float('nan')):.2f}" for n in names),
        )
    console.print(table)
    console.print(f"handed out in {result.handout} (manifest.csv, footprints.geojson, quicklooks/)")


@app.command()
def effort(
    plot: Annotated[Path | None, typer.Option(help="PNG of IoU against expert minutes (default: reports/effort.png in "
                                                   "the workspace).")] = None,
    workspace: WorkspaceOption = None,
) -> None:
    """What the experts' time bought: each version's validation IoU against the Label Studio lead time of its labels."""
    from al_loop.effort import effort_points, plot_effort
    from al_loop.model.metrics import INTERVAL_NOTE, iou_text

    with _clear_errors(), _store(workspace) as (ws, store):
        with console.status("scoring versions on the current validation set"):
            points, scored_on = effort_points(ws, store)
        if not points:
            raise LookupError("no model version yet: train one first (al-loop train)")
        path = plot_effort(points, plot or ws.root / "reports" / "effort.png", f"expert time and IoU, {scored_on}")
    table = Table(title=f"expert time and IoU on the current {scored_on}",
                  caption="expert minutes: summed Label Studio lead times of the labels a version trained on; "
                          f"labels without one (inventories, imported masks) are counted apart; {INTERVAL_NOTE}")
    for column in ("version", "status", "labels", "with lead time", "expert minutes", "clean ice", "debris", "glacier"):
        table.add_column(column, justify="left" if column in ("version", "status") else "right")
    for p in points:
        table.add_row(p.version, p.status, str(p.labels), str(p.timed_labels), f"{p.expert_minutes:.1f}",
                      *(iou_text(p.rows.get(r)) for r in ("clean_ice", "debris", "glacier")))
    console.print(table)
    console.print(f"plot: {path}")


@app.command()
def simulate(
    out: Annotated[Path, typer.Option(help="Folder for the CSVs and the learning-curve PNG.")] = Path("simulation"),
    size: Annotated[str, typer.Option(help="small (a few minutes on 2 CPU cores) or large.")] = "small",
    strategies: Annotated[
        str | None,
        typer.Option(
            help="Comma-separated strategies (random is always included), each NAME[+power|+greedy|+warmupN|+region]."
        ),
    ] = None,
    seeds: Annotated[str | None, typer.Option(help="Comma-separated seeds.")] = None,
    rounds: Annotated[int | None, typer.Option(help="Rounds after the seed set.")] = None,
    round_size: Annotated[int | None, typer.Option(help="Patches labelled per round.")] = None,
    seed_set: Annotated[
        int | None, typer.Option(help="Randomly chosen patches labelled before the first model.")
    ] = None,
    patch_size: Annotated[
        int | None, typer.Option(help="Patch side in pixels (default: 128; --scene: ingest.patch_size).")
    ] = None,
    classes: Annotated[
        str | None, typer.Option(help="multiclass or binary (default: model.classes with --scene).")
    ] = None,
    scene: Annotated[
        int | None,
        typer.Option(help="Simulate on this ingested scene's labels (of --workspace) instead of synthetic scenes."),
    ] = None,
    holdout: Annotated[
        str, typer.Option(help="With --scene: the side held out as the test region: east, west, north or south.")
    ] = "east",
    holdout_fraction: Annotated[float, typer.Option(help="With --scene: the share of the scene held out.")] = 0.25,
    jobs: Annotated[int, typer.Option(help="Seeds run side by side in this many processes.")] = 1,
    workspace: WorkspaceOption = None,
    quiet: QuietOption = False,
) -> None:
    """Compare strategies against random with an oracle: learning curves, normalised AULC and
    its paired difference from random, labels to reach 95% of the full-pool model."""
    from al_loop.simulate import SimulationConfig, run_simulation

    with _clear_errors():
        if size not in ("small", "large"):
            raise ValueError(f"--size must be small or large, found {size!r}")
        cfg = SimulationConfig.small() if size == "small" else SimulationConfig.large()
        if strategies:
            cfg.strategies = list(dict.fromkeys(["random", *(s.strip() for s in strategies.split(","))]))
        if seeds:
            try:
                cfg.seeds = [int(s) for s in seeds.split(",")]
            except ValueError:
                raise ValueError(f"--seeds takes comma-separated integers, found {seeds!r}") from None
        for attribute, value in (("rounds", rounds), ("round_size", round_size), ("seed_set", seed_set),
                                 ("patch_size", patch_size), ("classes", classes)):
            if value is not None:
                setattr(cfg, attribute, value)
        cfg.holdout, cfg.holdout_fraction, cfg.jobs = holdout, holdout_fraction, jobs
        if scene is None:
            cfg.check()
            result = run_simulation(out, cfg, quiet=quiet)
        else:
            with _store(workspace) as (ws, store):
                cfg.patch_size = patch_size or ws.config.ingest.patch_size
                cfg.classes = classes or ws.config.model.classes
                cfg.check()
                result = run_simulation(out, cfg, quiet=quiet, source=(ws, store, scene))
    table = Table(
        title=f"simulation: {len(cfg.seeds)} seeds, seed set {cfg.seed_set}, {cfg.rounds} rounds of "
        f"{cfg.round_size}; full-pool glacier IoU {result['full_pool_glacier']:.3f}",
        caption="AULC: mean glacier IoU (clean ice and debris together) over the labels; gain: paired by seed",
    )
    for column in ("strategy", "AULC glacier", "gain over random", "AULC debris", "labels to 95% of full pool",
                   "final glacier IoU", "final debris IoU"):
        table.add_column(column, justify="left" if column == "strategy" else "right")
    for row in result["rows"]:
        reach = ", ".join("-" if r is None else f"{r:g}" for r in row["labels_to_95pct"])
        gain = "-" if row["strategy"] == "random" else (
            f"{row['gain_over_random_mean']:+.3f} ± {_score(row['gain_over_random_sd'])}")
        table.add_row(row["strategy"], f"{row['aulc_mean']:.3f} ± {row['aulc_std']:.3f}", gain,
                      _score(row["aulc_debris_mean"]), reach, _score(row["final_glacier_iou"]),
                      _score(row["final_debris_iou"]))
    console.print(table)
    for what in ("csv", "summary", "png"):
        console.print(f"  {what}: {result[what]}")


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Listen address (config backend.host).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (config backend.port, which `connect` registers).")] = None,
    worker: Annotated[
        bool, typer.Option(help="Run the training worker in this process (config backend.worker).")
    ] = True,
    processes: Annotated[
        int | None,
        typer.Option(
            min=1, help="Server processes (config backend.processes): webhooks and predictions on more cores."
        ),
    ] = None,
    workspace: WorkspaceOption = None,
) -> None:
    """The Label Studio ML backend: predictions, webhooks into the store, retraining by label
    counts. Syncs with Label Studio first (annotations saved while it was down)."""
    from backends.service import serve as run

    with _clear_errors(), _store(workspace) as (ws, store):
        ws.config.backend.worker = ws.config.backend.worker and worker
        console.print(f"al-loop backend on http://{host or ws.config.backend.host}:{port or ws.config.backend.port}")
        run(ws, store, host=host, port=port, processes=processes)


@app.command()
def worker(
    once: Annotated[bool, typer.Option(help="Run the queued jobs, then stop.")] = False,
    workspace: WorkspaceOption = None,
) -> None:
    """Run queued training jobs (e.g. on a GPU machine beside `al-loop serve --no-worker`)."""
    from al_loop.jobs import Worker

    with _clear_errors(), _store(workspace) as (ws, store):
        job_worker = Worker(ws, store)
        console.print(f"worker {job_worker.name} waiting for training jobs" + (" (once)" if once else ""))
        try:
            job_worker.run(once=once)
        except KeyboardInterrupt:
            console.print("stopped")


@app.command()
def connect(workspace: WorkspaceOption = None) -> None:
    """Create or update the Label Studio project (label config, quicklook storage, this backend,
    the webhook) and import the open rounds as tasks with predictions. Needs `al-loop serve`
    running: Label Studio checks the backend when it is registered."""
    from backends.studio import connect as run

    with _clear_errors(), _store(workspace) as (ws, store):
        report = run(ws, store)
    console.print(f"{'created' if report.created else 'updated'} Label Studio project {report.project_id} "
                  f"({ws.config.label_studio.url}/projects/{report.project_id})")
    if report.refreshed:
        console.print(f"  {report.refreshed} open tasks brought up to date (views, description)")
    for number, n in report.imported.items():
        console.print(f"  round {number}: {n} tasks imported")
    console.print(
        f"  {report.predictions} predictions pushed with model {report.model_version or 'none (no model yet)'}"
    )


@app.command("label-config")
def label_config_command(
    polygons: Annotated[bool, typer.Option("--polygons", help="offer polygon tools beside the brushes")] = False,
) -> None:
    """Print the labeling config XML, for teams that create the Label Studio project themselves
    (title it as label_studio.project_title says; `al-loop connect` then adopts it)."""
    from backends.label_config import label_config

    typer.echo(label_config(polygons=polygons), nl=False)


@app.command()
def sync(workspace: WorkspaceOption = None) -> None:
    """Reconcile the store with the Label Studio project's annotations (nothing saved while the
    backend was down is lost)."""
    from backends.studio import sync as run

    with _clear_errors(), _store(workspace) as (ws, store):
        report = run(ws, store)
    console.print(f"project {report.project_id}: {report.tasks} tasks; labels {dict(report.outcomes) or 'unchanged'}")
    if report.closed_rounds:
        console.print(f"  closed round(s) {', '.join(map(str, report.closed_rounds))}")
    if report.job_id:
        console.print(f"  training job {report.job_id} queued")
    if report.problems:
        errors.print(f"[yellow]{len(report.problems)} annotation(s) could not be stored[/]")


@app.command()
def demo(
    workspace: WorkspaceOption = None,
    size: Annotated[int | None, typer.Option(help="Synthetic scene side in pixels (config synthetic.size).")] = None,
    label_studio: Annotated[bool, typer.Option(help="Start Label Studio and the backend (else stop after the first "
                                                    "round).")] = True,
    port: Annotated[
        int | None, typer.Option(help="Label Studio's port (default 8080, or a free one when 8080 is taken).")
    ] = None,
    wait: Annotated[bool, typer.Option(help="Keep Label Studio and the backend running until Ctrl-C.")] = True,
) -> None:
    """The main job on the embedded default: a SQLite workspace, two built-in scenes (an
    inventory and a pool), a first model, its first round, and a Label Studio project with it."""
    from backends.demo import prepare, run_live

    with _clear_errors():
        root = (workspace or Path("workspace")).resolve()
        state = prepare(root, size or open_workspace(root).config.synthetic.size, console.print)
        try:
            status(workspace=root)
            if label_studio:
                run_live(state, port, console.print, wait=wait)
        finally:
            state.store.dispose()


def _report(result: IngestResult) -> None:
    if result.already_present:
        console.print(
            f"already ingested: scene {result.scene_id} ({result.name}), {result.patches} patches; nothing changed"
        )
        return
    console.print(
        f"ingested scene {result.scene_id} ({result.name}): {result.patches} patches, "
        f"{result.low_valid} below the valid-pixel threshold"
    )
    missing = result.details.get("missing_channels") or []
    if missing:
        console.print(
            f"[yellow]note:[/] the scene lacks {len(missing)} of the 15 channels: {', '.join(missing)}. A model that "
            "uses any of them cannot run on it (its patches are left out of rounds); training uses the channels "
            "every labelled scene has (model.channels empty) or the ones model.channels names.", highlight=False)
    for what, count in result.labels.items():
        console.print(f"  labels {what}: {count}")


def _safe_url(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


if __name__ == "__main__":
    app()
