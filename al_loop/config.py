"""The workspace and its configuration: one typed object, loaded once, passed down.

A workspace is a folder holding ``al-loop.toml`` (this configuration), the SQLite database
(unless ``database.url`` points elsewhere) and derived files (scene stacks, quicklooks).
Values come from, in order of precedence: command-line options, environment variables
``AL_LOOP_<SECTION>_<KEY>`` (for example ``AL_LOOP_DATABASE_URL``), the TOML file, defaults.
No other module reads the environment.
"""

from __future__ import annotations

import dataclasses
import os
import re
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w

CONFIG_FILE = "al-loop.toml"
DATABASE_FILE = "al-loop.db"
WORKSPACE_ENV = "AL_LOOP_WORKSPACE"
ENV_PREFIX = "AL_LOOP_"


class ConfigError(ValueError):
    """The configuration file or an override is wrong."""


def setting(default: Any, doc: str, choices: tuple[str, ...] | None = None,
            parse: Callable[[Any, str], Any] | None = None) -> Any:
    """A configuration key with its default, the one-line documentation written to the file,
    for a word the values it may take, and for a key of several forms its own ``parse(value,
    where)`` (each checked when the configuration is loaded)."""
    metadata = {"doc": doc, "choices": choices, "parse": parse}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass
class DatabaseConfig:
    url: str = setting(
        "",
        "SQLAlchemy URL; empty: SQLite file al-loop.db in the workspace. "
        "PostgreSQL: postgresql+psycopg://user:password@host:port/dbname",
    )


@dataclass
class IngestConfig:
    patch_size: int = setting(256, "patch side in pixels (the HKH slices are 512)")
    patch_overlap: int = setting(0, "pixels shared by neighbouring patches")
    min_valid_fraction: float = setting(
        0.2, "patches with fewer valid pixels are kept but marked low_valid"
    )
    quicklooks: bool = setting(
        True, "write natural-colour (B3/B2/B1) and false-colour (B5/B4/B2) PNGs per patch"
    )
    stretch_percentiles: list[float] = setting(
        [2.0, 98.0], "quicklook percentile stretch, computed per scene on its valid pixels"
    )


@dataclass
class SyntheticConfig:
    size: int = setting(1024, "side in pixels of the built-in synthetic scene")
    seed: int = setting(0, "seed of the built-in synthetic scene")


@dataclass
class ModelConfig:
    channels: list[str] = setting(
        [],
        "input channels by name (any subset of the 15 HKH channels); empty: every channel the labelled "
        "scenes share, except BQA (quality flags, coded differently by each collection)",
    )
    classes: str = setting("multiclass", "multiclass (background, clean_ice, debris) or binary (background, glacier)",
                           ("multiclass", "binary"))
    depth: int = setting(4, "U-Net levels (the paper: 5)")
    base_filters: int = setting(16, "filters of the first level, doubling per level (the paper: 16)")
    max_filters: int = setting(256, "cap on filters per level (the paper: 512)")
    dropout: float = setting(0.3, "spatial dropout rate, kept active for Monte Carlo sampling")
    mc_samples: int = setting(10, "Monte Carlo dropout samples for uncertainty")
    precision: str = setting("auto", "inference arithmetic (scoring, pre-labels, scene prediction): auto is bf16 "
                             "where the CPU (AVX-512 BF16, AMX) or GPU computes it natively, else fp32; or fp32, bf16",
                             ("auto", "fp32", "bf16"))


def _class_weights(value: Any, where: str) -> str | list[float]:
    """``auto``, or one positive number per class (a TOML list, or comma-separated in the environment)."""
    if isinstance(value, str) and value.strip().lower() == "auto":
        return "auto"
    items = value.split(",") if isinstance(value, str) else value
    try:
        if isinstance(items, bool) or not isinstance(items, list | tuple) or any(isinstance(v, bool) for v in items):
            raise ValueError(value)
        weights = [float(v) for v in items]
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: expected auto or a list of numbers, one per class, found {value!r}") from None
    if not weights or any(not w > 0 for w in weights):
        raise ConfigError(f"{where}: class weights must be positive numbers, found {value!r}")
    return weights


@dataclass
class TrainingConfig:
    class_weights: str | list[float] = setting(
        "auto", "loss weight per class: auto (from the training labels' class shares, recomputed at every training, "
        "at most 10 to 1; see al_loop/model/balance.py) or one number per class in class order (the paper's: "
        "[0.2, 0.6, 0.9] for background, clean ice, debris)", parse=_class_weights)
    dice_weight: float = setting(1.0, "weight of the class-weighted soft Dice term")
    cross_entropy_weight: float = setting(1.0, "weight of the class-weighted cross-entropy term")
    precision: str = setting("auto", "training arithmetic: auto is mixed precision on CUDA and fp32 on the CPU; "
                                     "bf16 autocast on the CPU trains about 1.45x faster for about 0.01 IoU "
                                     "(validation and the gate stay fp32)", ("auto", "fp32", "bf16"))
    learning_rate: float = setting(3e-3, "Adam learning rate at the start (the paper: 1e-4, constant)")
    lr_schedule: str = setting("cosine", "constant, or cosine: annealed to 1/100 of learning_rate over max_epochs",
                               ("constant", "cosine"))
    batch_size: int = setting(4, "patches per gradient step")
    crop_size: int = setting(128, "random training crop side in pixels (0: whole patches): crops of a quarter "
                                  "patch give four times the gradient steps for the same pixels")
    crops_per_patch: int = setting(4, "random crops taken from each patch per epoch (with crop_size)")
    min_steps: int = setting(8, "gradient steps an epoch takes at least: with few labelled patches each is taken "
                                 "several times an epoch, each time with its own crop and augmentation")
    max_epochs: int = setting(60, "upper bound on epochs (the cosine schedule's length)")
    patience: int = setting(15, "stop after this many epochs without a better validation score")
    validation_fraction: float = setting(
        0.2, "share of the labelled patches held out for validation, as whole spatial blocks"
    )
    validation_block: int = setting(512, "side in pixels of the spatial blocks that are held out whole")
    validation_seed: int = setting(0, "seed of the validation draw (changing it re-draws only while no model exists)")
    validation_routing: str = setting(
        "share",
        "where labels in new blocks go: share (validation while it holds less than validation_fraction, "
        "or when they show a class it lacks) or train (validation stays the first draw)",
        ("share", "train"),
    )
    augment: bool = setting(True, "random flips and 90-degree rotations")
    band_jitter: float = setting(0.0, "gain and offset jitter of the raw bands: all scaled by one 1 + N(0, this) "
                                      "(illumination), each by its own 1 + N(0, this) and shifted by N(0, this) of "
                                      "its spread; indices recomputed (0: off)")
    gap_augment: float = setting(0.0, "share of training items given SLC-off-like gap stripes (no data, no loss)")
    weight_average: bool = setting(False, "keep and judge the exponential moving average of the weights (decay 0.99 "
                                         "a step): on few labels the last step's weights swing from epoch to epoch")
    semi_supervised: bool = setting(False, "learn from unlabelled pool patches too: a mean teacher's confident "
                                           "pseudo-labels (never a validation patch; about twice the time per step)")
    semi_weight: float = setting(1.0, "semi-supervised: weight of the unlabelled term once ramped in")
    semi_threshold: float = setting(0.9, "semi-supervised: the teacher's least probability for a pseudo-label")
    semi_pool: int = setting(4, "semi-supervised: unlabelled patches drawn, per labelled training patch, for a run")
    loader_workers: int = setting(1, "processes that read and augment training patches while the model computes "
                                  "(0: read in the training process)")
    cache_mb: int = setting(256, "patch pixels kept in memory between epochs, per process (the training worker's, "
                            "the validation's); patches beyond it are read again from their files each epoch")
    shrink: float = setting(1.0, "fine-tuning: parent weights are multiplied by this (1: plain warm start)")
    perturb: float = setting(0.0, "fine-tuning: std of noise added to shrunk parent weights")
    seed: int = setting(0, "seed of initialisation, sampling and augmentation")
    promotion_margin: float = setting(
        0.02,
        "a candidate is promoted unless an IoU (clean ice, debris, glacier) falls more than this below the best "
        "any served version reached on the same validation set",
    )


@dataclass
class SamplingConfig:
    strategy: str = setting("combined", "random, entropy, margin, bald, debris, cloud, combined or balanced",
                            ("random", "entropy", "margin", "bald", "debris", "cloud", "combined", "balanced"))
    round_size: int = setting(10, "patches per round (fewer when the pool holds fewer)")
    top_q: float = setting(0.1, "a patch scores the mean of its top q fraction of valid pixels")
    per_scene_cap: int = setting(0, "at most this many patches of one scene per round (0: no cap)")
    exclusion_radius: float = setting(1000.0, "metres: no two patches of a round closer than this")
    method: str = setting("", "diversity: kcenter (on bottleneck features), power or greedy; empty: kcenter with a "
                              "model, greedy cold",
                          ("", "kcenter", "power", "greedy"))
    batch_size: int = setting(4, "patches scored per Monte Carlo batch")
    ray_address: str = setting("", "score the pool on a Ray cluster (pip install al-loop[ray]): its address "
                               "(ray://host:10001, or host:6379 on a cluster node), or local to start one here; "
                               "empty: score in this process")
    ray_workers: int = setting(2, "model actors scoring on the Ray cluster (each reads patches and holds a model)")
    ray_gpus: float = setting(0.0, "GPUs per Ray scoring actor (0: CPU workers)")
    seed: int = setting(0, "seed of Monte Carlo masks and random choices")
    query: str = setting("patch", "what an expert is asked to label: the whole patch, or only its "
                                  "most ambiguous region "
                         "(a square window of sampling.region_fraction of it; needs a model)", ("patch", "region"))
    region_fraction: float = setting(0.25, "region queries: the share of a patch's pixels in the window")
    cost_aware: bool = setting(False, "rank patches by score per expected expert second (a cost model fitted on "
                                      "Label Studio's lead times; a prior before five exist)")
    warmup_labels: int = setting(
        0, "rounds choose at random until this many training patches are labelled (early models are unsure "
           "of the wrong things)"
    )


@dataclass
class RetrainingConfig:
    label_threshold: int = setting(
        10, "queue a fine-tuning job once this many accepted labels arrived since the last trained version"
    )
    debris_pixel_threshold: int = setting(
        250_000, "queue one earlier once the new labels hold this many debris-covered pixels (0: off)"
    )
    auto_next_round: bool = setting(
        True, "after a promotion, choose the next round with the new champion (and import it when connected)"
    )
    poll_seconds: float = setting(2.0, "how often a worker looks for queued training jobs")
    stale_seconds: float = setting(
        1800.0, "a running job whose worker has not reported for this long is taken over (resumed) by another"
    )


@dataclass
class BackendConfig:
    host: str = setting("127.0.0.1", "address `al-loop serve` listens on")
    port: int = setting(9090, "port `al-loop serve` listens on")
    url: str = setting("", "URL Label Studio uses to reach the backend; empty: http://<host>:<port>")
    username: str = setting("al-loop", "HTTP Basic auth user Label Studio sends to the backend")
    password: str = setting("", "HTTP Basic auth password (a random one is written at init)")
    webhook_secret: str = setting("", "shared secret expected in the X-Al-Loop-Secret header of "
                                      "webhooks (random at init)")
    prediction_format: str = setting(
        "brush", "predictions as brush (RLE masks, exact) or polygons", ("brush", "polygons")
    )
    batch_size: int = setting(4, "patches per inference batch in /predict")
    min_mapping_unit_m2: float = setting(
        10_000.0, "pre-labels: parts of a class smaller than this take their surroundings' class "
                  "(GLIMS' 0.01 km² minimum glacier; 0: off)")
    smoothing_radius: int = setting(1, "pre-labels: radius in pixels of the majority filter smoothing class "
                                       "boundaries (0: off)")
    worker: bool = setting(True, "run the training worker inside `al-loop serve`")
    processes: int = setting(1, "HTTP server processes of `al-loop serve` (webhooks and predictions on more cores; "
                                "the first also runs the training worker)")


@dataclass
class LabelStudioConfig:
    url: str = setting("", "Label Studio URL, e.g. http://127.0.0.1:8080")
    api_key: str = setting("", "Label Studio API key: a legacy token or a personal access token")
    project_title: str = setting("al-loop glaciers", "title of the Label Studio project al-loop creates and syncs")
    document_root: str = setting(
        "", "Label Studio's LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT (quicklooks must lie under it); empty: the workspace"
    )
    polygons: bool = setting(False, "offer polygon tools beside the brush in the labeling config")


@dataclass
class LoggingConfig:
    level: str = setting("info", "what the backend, worker and commands log: debug, info, warning or error",
                         ("debug", "info", "warning", "error"))


@dataclass
class Config:
    database: DatabaseConfig = field(default_factory=DatabaseConfig)
    ingest: IngestConfig = field(default_factory=IngestConfig)
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    retraining: RetrainingConfig = field(default_factory=RetrainingConfig)
    backend: BackendConfig = field(default_factory=BackendConfig)
    label_studio: LabelStudioConfig = field(default_factory=LabelStudioConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)


PROFILES: dict[str, dict[str, dict[str, Any]]] = {
    # Sized for 2 CPU cores: the built-in scene's first model trains in minutes.
    "cpu": {},
    # The paper's sizes, for a CUDA GPU.
    "cuda": {
        "ingest": {"patch_size": 512},
        "model": {"depth": 5, "max_filters": 512, "mc_samples": 20},
        "training": {"learning_rate": 1e-3, "batch_size": 8, "crop_size": 256, "validation_block": 1024},
    },
}
"""Compute profiles chosen at ``al-loop init``: overrides of the defaults (which are ``cpu``)."""


def detect_profile() -> str:
    """``cuda`` when torch sees a GPU, else ``cpu``."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def apply_profile(config: Config, profile: str) -> Config:
    if profile not in PROFILES:
        raise ConfigError(f"unknown compute profile {profile!r}; choose {', '.join(PROFILES)}")
    _apply(config, PROFILES[profile], f"profile {profile}")
    return config


@dataclass
class Workspace:
    """A workspace folder and its loaded configuration."""

    root: Path
    config: Config

    @property
    def database_url(self) -> str:
        return self.config.database.url or f"sqlite:///{self.root / DATABASE_FILE}"

    @property
    def scenes_dir(self) -> Path:
        return self.root / "scenes"

    @property
    def staging_dir(self) -> Path:
        return self.root / "staging"

    def relative(self, path: Path) -> str:
        """A path as stored in the database: relative to the workspace when inside it (so the
        workspace can be moved), absolute otherwise (sources referenced in place)."""
        path = Path(path).resolve()
        try:
            return path.relative_to(self.root.resolve()).as_posix()
        except ValueError:
            return str(path)

    def resolve(self, stored: str | None) -> Path:
        """The inverse of :meth:`relative`. None is a file the store does not record (a scene
        ingested as slices keeps its pixels in its patches' files, not in one scene file)."""
        if stored is None:
            raise FileNotFoundError("the store records no file here: a scene ingested as slices has none of its own")
        path = Path(stored)
        return path if path.is_absolute() else self.root / path


def _coerce(value: Any, default: Any, where: str) -> Any:
    """Convert a TOML or environment value to the type of the default, or fail naming ``where``."""
    try:
        if isinstance(default, bool):
            if isinstance(value, str):
                if value.lower() in ("1", "true", "yes", "on"):
                    return True
                if value.lower() in ("0", "false", "no", "off"):
                    return False
                raise ValueError(value)
            if not isinstance(value, bool):
                raise ValueError(value)
            return value
        if isinstance(default, list):
            items = value.split(",") if isinstance(value, str) else list(value)
            kind = type(default[0]) if default else str
            return [kind(v) for v in items]
        if isinstance(default, int) and isinstance(value, float) and not value.is_integer():
            raise ValueError(value)
        return type(default)(value)
    except (TypeError, ValueError):
        raise ConfigError(
            f"{where}: expected {type(default).__name__}, found {value!r}"
        ) from None


def _apply(config: Config, values: dict[str, dict[str, Any]], origin: str) -> None:
    for section_name, section_values in values.items():
        if not hasattr(config, section_name):
            known = ", ".join(f.name for f in dataclasses.fields(config))
            raise ConfigError(f"{origin}: unknown section [{section_name}]; known: {known}")
        if not isinstance(section_values, dict):
            raise ConfigError(f"{origin}: [{section_name}] must be a table")
        section = getattr(config, section_name)
        fields = {f.name: f for f in dataclasses.fields(section)}
        for key, value in section_values.items():
            if key not in fields:
                raise ConfigError(
                    f"{origin}: unknown key {section_name}.{key}; known keys: {', '.join(fields)}"
                )
            where = f"{origin}: {section_name}.{key}"
            parse = fields[key].metadata.get("parse")
            value = parse(value, where) if parse else _coerce(value, getattr(section, key), where)
            choices = fields[key].metadata.get("choices")
            if choices and value not in choices:
                raise ConfigError(f"{where}: expected one of {', '.join(choices)}, found {value!r}")
            setattr(section, key, value)


def _environment_values(environ: dict[str, str]) -> dict[str, dict[str, Any]]:
    values: dict[str, dict[str, Any]] = {}
    defaults = Config()
    for f in dataclasses.fields(Config):
        for key in (k.name for k in dataclasses.fields(getattr(defaults, f.name))):
            name = f"{ENV_PREFIX}{f.name}_{key}".upper()
            if name in environ:
                values.setdefault(f.name, {})[key] = environ[name]
    return values


def check(config: Config, origin: str) -> Config:
    """Values that are wrong together or out of range, named by key (words are checked against
    their choices as they are read)."""
    c = config
    problems = []
    if not 0 < c.training.validation_fraction < 1:
        problems.append(f"training.validation_fraction must be between 0 and 1, found {c.training.validation_fraction}")
    for key, value in (("ingest.patch_size", c.ingest.patch_size), ("model.depth", c.model.depth),
                       ("model.base_filters", c.model.base_filters), ("training.batch_size", c.training.batch_size),
                       ("training.max_epochs", c.training.max_epochs), ("training.validation_block",
                                                                        c.training.validation_block),
                       ("backend.processes", c.backend.processes)):
        if value < 1:
            problems.append(f"{key} must be at least 1, found {value}")
    multiple = 2 ** max(c.model.depth, 0)
    for key, value in (("ingest.patch_size", c.ingest.patch_size), ("training.crop_size", c.training.crop_size)):
        if value > 0 and value % multiple:
            problems.append(f"{key} {value} must be a multiple of {multiple} (2**model.depth, model.depth "
                            f"{c.model.depth})")
    if not 0 <= c.ingest.patch_overlap < max(c.ingest.patch_size, 1):
        problems.append(f"ingest.patch_overlap must be in [0, ingest.patch_size), found {c.ingest.patch_overlap}")
    problems += _share_problems(c)
    if problems:
        raise ConfigError(f"{origin}: " + "; ".join(problems))
    return config


def _share_problems(c: Config) -> list[str]:
    """Shares, rates and counts out of their ranges, named by key."""
    problems: list[str] = []
    if not 0 < c.sampling.region_fraction <= 1:
        problems.append(f"sampling.region_fraction must be in (0, 1], found {c.sampling.region_fraction}")
    for key in ("loader_workers", "cache_mb"):
        if getattr(c.training, key) < 0:
            problems.append(f"training.{key} must be at least 0, found {getattr(c.training, key)}")
    if c.training.band_jitter < 0:
        problems.append(f"training.band_jitter must be at least 0, found {c.training.band_jitter}")
    if not 0 <= c.training.gap_augment <= 1:
        problems.append(f"training.gap_augment must be between 0 and 1, found {c.training.gap_augment}")
    if c.sampling.warmup_labels < 0:
        problems.append(f"sampling.warmup_labels must be at least 0, found {c.sampling.warmup_labels}")
    for key in ("min_mapping_unit_m2", "smoothing_radius"):
        if getattr(c.backend, key) < 0:
            problems.append(f"backend.{key} must be at least 0, found {getattr(c.backend, key)}")
    if not 0 <= c.model.dropout < 1:
        problems.append(f"model.dropout must be in [0, 1), found {c.model.dropout}")
    return problems


def load_config(
    root: Path,
    overrides: dict[str, dict[str, Any]] | None = None,
    environ: dict[str, str] | None = None,
) -> Config:
    """Defaults, then the workspace's TOML file, then the environment, then ``overrides``;
    checked as a whole."""
    config = Config()
    path = Path(root) / CONFIG_FILE
    if path.exists():
        try:
            values = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML: {exc}") from None
        _apply(config, values, str(path))
    _apply(config, _environment_values(dict(os.environ if environ is None else environ)), "environment")
    if overrides:
        _apply(config, overrides, "option")
    return check(config, str(path) if path.exists() else "configuration")


PROFILE_NOTE = "# Sizes were set for the {0} compute profile (al-loop init --profile {0})."
_PROFILE_NOTE = re.compile(r"^# Sizes were set for the (\w+) compute profile", re.MULTILINE)


def write_config(root: Path, config: Config, profile: str | None = None) -> Path:
    """Write the configuration with every key and its documentation, so users see what can
    be set."""
    lines = [
        "# al-loop workspace configuration. Every key has a default; environment variables",
        "# AL_LOOP_<SECTION>_<KEY> override this file, command-line options override both.",
    ]
    path = Path(root) / CONFIG_FILE
    if profile is None and path.exists():  # rewriting keeps the note of the profile it was made for
        found = _PROFILE_NOTE.search(path.read_text())
        profile = found[1] if found else None
    if profile:
        lines.append(PROFILE_NOTE.format(profile))
    for section_field in dataclasses.fields(config):
        section = getattr(config, section_field.name)
        lines += ["", f"[{section_field.name}]"]
        for key_field in dataclasses.fields(section):
            value = getattr(section, key_field.name)
            lines.append(f"# {key_field.metadata['doc']}")
            lines.append(tomli_w.dumps({key_field.name: value}).strip())
    path.write_text("\n".join(lines) + "\n")
    return path


def open_workspace(
    root: Path | str | None = None,
    overrides: dict[str, dict[str, Any]] | None = None,
    environ: dict[str, str] | None = None,
) -> Workspace:
    """The workspace at ``root`` (or ``$AL_LOOP_WORKSPACE``, or the current folder)."""
    env = dict(os.environ if environ is None else environ)
    folder = Path(root or env.get(WORKSPACE_ENV) or ".").expanduser().resolve()
    return Workspace(root=folder, config=load_config(folder, overrides, env))
