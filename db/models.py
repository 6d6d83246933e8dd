"""The SQL store's tables (SQLAlchemy 2.x typed models).

The store is the only state shared by the CLI, the Label Studio backend and training workers.
Provenance is kept: a model version links to the exact labels it was trained on, a round to the
model version that scored it, a label revision to the one it replaced.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    Date,
    DateTime,
    Float,
    ForeignKey,
    Index,
    LargeBinary,
    String,
    Table,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}


class Scene(Base):
    """One image source: an HKH fused tile, a USGS Level-1 scene, a band stack, a slices
    folder or a synthetic scene. Pixels are read from ``data_path`` (a GeoTIFF in the source's
    or the workspace's grid) or, for slices, from each patch's own file."""

    __tablename__ = "scenes"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    source_kind: Mapped[str] = mapped_column(String(32))  # hkh_tile, usgs_l1, band_stack, slices, synthetic
    source_uri: Mapped[str] = mapped_column(Text)
    fingerprint: Mapped[str] = mapped_column(String(64), unique=True)
    sensor: Mapped[str | None] = mapped_column(String(32))
    acquired: Mapped[dt.date | None] = mapped_column(Date)
    crs: Mapped[str | None] = mapped_column(Text)  # WKT
    transform: Mapped[list[Any] | None]  # affine a, b, c, d, e, f
    width: Mapped[int]
    height: Mapped[int]
    channels: Mapped[list[Any]]  # the channel names in the data file, in order
    available_channels: Mapped[list[Any]]  # those with data (a scene may lack some bands)
    data_path: Mapped[str | None] = mapped_column(Text)  # relative to the workspace or absolute
    stretch: Mapped[dict[str, Any] | None]  # per-channel quicklook stretch {name: [lo, hi]}
    details: Mapped[dict[str, Any]] = mapped_column(default=dict)  # ingest options and counts
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    patches: Mapped[list[Patch]] = relationship(back_populates="scene")


class Patch(Base):
    """A window on a scene. ``row_off``/``col_off`` are in the scene's pixel grid; a patch may
    reach past the scene's edge (read as nodata) so that every patch has the same size."""

    __tablename__ = "patches"
    __table_args__ = (UniqueConstraint("scene_id", "row_off", "col_off", name="uq_patch_window"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    scene_id: Mapped[int] = mapped_column(ForeignKey("scenes.id", ondelete="CASCADE"), index=True)
    row_off: Mapped[int]
    col_off: Mapped[int]
    height: Mapped[int]
    width: Mapped[int]
    minx: Mapped[float | None]
    miny: Mapped[float | None]
    maxx: Mapped[float | None]
    maxy: Mapped[float | None]
    valid_fraction: Mapped[float] = mapped_column(Float)
    low_valid: Mapped[bool] = mapped_column(Boolean, default=False)
    split: Mapped[str | None] = mapped_column(String(16))  # train / val / test / pool
    data_path: Mapped[str | None] = mapped_column(Text)  # own pixel file (slices), else the scene's
    quicklook_rgb: Mapped[str | None] = mapped_column(Text)
    quicklook_false: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    scene: Mapped[Scene] = relationship(back_populates="patches")
    labels: Mapped[list[Label]] = relationship(back_populates="patch")

    @property
    def bounds(self) -> tuple[float, float, float, float] | None:
        """(minx, miny, maxx, maxy) in the scene's CRS; None for a patch not placed on the ground."""
        if self.minx is None or self.miny is None or self.maxx is None or self.maxy is None:
            return None
        return self.minx, self.miny, self.maxx, self.maxy


class Label(Base):
    """A label mask for one patch (see :mod:`al_loop.classes` for its encoding).

    ``origin`` identifies where it came from (an inventory file and attribute mapping, a
    Label Studio annotation id, an oracle) so that re-ingesting or re-delivering the same label
    is idempotent; an edit of the same origin is a new ``revision`` and the older row becomes
    ``superseded``. Rows are never deleted: a removed annotation becomes ``retired``.
    """

    __tablename__ = "labels"
    __table_args__ = (
        UniqueConstraint("patch_id", "source", "origin", "revision", name="uq_label_revision"),
        Index("ix_labels_status_source", "status", "source"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    patch_id: Mapped[int] = mapped_column(ForeignKey("patches.id", ondelete="CASCADE"), index=True)
    source: Mapped[str] = mapped_column(String(16))  # inventory / annotation / oracle
    origin: Mapped[str] = mapped_column(String(255))
    revision: Mapped[int] = mapped_column(default=1)
    status: Mapped[str] = mapped_column(String(16), default="accepted")  # accepted / superseded / retired
    author: Mapped[str | None] = mapped_column(String(200))
    mask: Mapped[bytes] = mapped_column(LargeBinary)  # zlib-compressed uint8, patch height x width
    n_background: Mapped[int] = mapped_column(default=0)
    n_clean_ice: Mapped[int] = mapped_column(default=0)
    n_debris: Mapped[int] = mapped_column(default=0)
    n_glacier: Mapped[int] = mapped_column(default=0)
    n_unlabeled: Mapped[int] = mapped_column(default=0)
    details: Mapped[dict[str, Any]] = mapped_column(default=dict)  # lead time, LS ids, file, ...
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(
        DateTime(timezone=True), default=utcnow, onupdate=utcnow
    )

    patch: Mapped[Patch] = relationship(back_populates="labels")


model_version_labels = Table(
    "model_version_labels",
    Base.metadata,
    Column("model_version_id", ForeignKey("model_versions.id", ondelete="CASCADE"), primary_key=True),
    Column("label_id", ForeignKey("labels.id"), primary_key=True),
)


class ModelVersion(Base):
    """A trained model: its parent, the labels it saw, how it was trained and how good it is."""

    __tablename__ = "model_versions"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("model_versions.id"))
    status: Mapped[str] = mapped_column(String(16), default="candidate")  # candidate / champion / rejected / retired
    channels: Mapped[list[Any]]
    classes: Mapped[list[Any]]
    config: Mapped[dict[str, Any]] = mapped_column(default=dict)
    seed: Mapped[int] = mapped_column(default=0)
    normalization: Mapped[dict[str, Any]] = mapped_column(default=dict)  # mean/std per channel
    label_set_hash: Mapped[str | None] = mapped_column(String(64))
    metrics: Mapped[dict[str, Any]] = mapped_column(default=dict)
    checkpoint_path: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    promoted_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))

    labels: Mapped[list[Label]] = relationship(secondary=model_version_labels)


class ModelEvaluation(Base):
    """A model version's scores on one validation set, named by the hash of its labelled
    patches and their labels: versions are compared only on the same set, and a version
    evaluated once on a set is never evaluated on it again."""

    __tablename__ = "model_evaluations"
    __table_args__ = (UniqueConstraint("model_version_id", "validation_set", name="uq_model_evaluation"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    model_version_id: Mapped[int] = mapped_column(ForeignKey("model_versions.id", ondelete="CASCADE"), index=True)
    validation_set: Mapped[str] = mapped_column(String(64))
    patches: Mapped[int]
    metrics: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class AnnotationTombstone(Base):
    """A Label Studio annotation that was deleted: deliveries of it arriving later (duplicates,
    updates saved before the deletion, overtaken deliveries) are ignored."""

    __tablename__ = "annotation_tombstones"
    __table_args__ = (UniqueConstraint("project", "annotation_id", name="uq_annotation_tombstone"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    project: Mapped[int] = mapped_column(BigInteger)
    annotation_id: Mapped[int] = mapped_column(BigInteger)
    deleted_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class StoreSetting(Base):
    """Settings the store's contents depend on, remembered so that a changed configuration
    is noticed (e.g. the validation split's seed and block size)."""

    __tablename__ = "store_settings"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[dict[str, Any]] = mapped_column(default=dict)
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow, onupdate=utcnow)


class PatchScore(Base):
    """Acquisition components of a patch under one model version (``None``: cold-start
    priors), and ``score``, its main raw uncertainty (BALD; the mean prior when cold).
    Strategies rank-normalise the components across the pool when a round is chosen."""

    __tablename__ = "patch_scores"
    __table_args__ = (
        UniqueConstraint("patch_id", "model_version_id", name="uq_patch_score"),
        Index("ix_patch_scores_model_score", "model_version_id", "score"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    patch_id: Mapped[int] = mapped_column(ForeignKey("patches.id", ondelete="CASCADE"))
    model_version_id: Mapped[int | None] = mapped_column(ForeignKey("model_versions.id"))
    score: Mapped[float]
    components: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Round(Base):
    """One batch of patches chosen for annotation."""

    __tablename__ = "rounds"

    id: Mapped[int] = mapped_column(primary_key=True)
    number: Mapped[int] = mapped_column(unique=True)
    strategy: Mapped[str] = mapped_column(String(32))
    model_version_id: Mapped[int | None] = mapped_column(ForeignKey("model_versions.id"))
    config: Mapped[dict[str, Any]] = mapped_column(default=dict)
    status: Mapped[str] = mapped_column(String(16), default="open")  # open / closed
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    patches: Mapped[list[RoundPatch]] = relationship(back_populates="round", order_by="RoundPatch.rank")


class RoundPatch(Base):
    __tablename__ = "round_patches"
    __table_args__ = (UniqueConstraint("round_id", "patch_id", name="uq_round_patch"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    round_id: Mapped[int] = mapped_column(ForeignKey("rounds.id", ondelete="CASCADE"), index=True)
    patch_id: Mapped[int] = mapped_column(ForeignKey("patches.id"), index=True)
    rank: Mapped[int]
    score: Mapped[float]
    components: Mapped[dict[str, Any]] = mapped_column(default=dict)
    external_id: Mapped[str | None] = mapped_column(String(64))  # e.g. the Label Studio task id
    # Region query: [row0, col0, row1, col1] of the window to label (None: the whole patch).
    region: Mapped[list[Any] | None] = mapped_column(default=None)

    round: Mapped[Round] = relationship(back_populates="patches")


class TrainingJob(Base):
    """A queued fine-tuning run; workers claim jobs atomically."""

    __tablename__ = "training_jobs"
    __table_args__ = (Index("ix_training_jobs_status", "status"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    status: Mapped[str] = mapped_column(String(16), default="queued")  # queued / running / done / failed / cancelled
    trigger: Mapped[str] = mapped_column(String(32))  # label_count / debris_pixels / manual / label_studio
    parent_model_id: Mapped[int | None] = mapped_column(ForeignKey("model_versions.id"))
    result_model_id: Mapped[int | None] = mapped_column(ForeignKey("model_versions.id"))
    claimed_by: Mapped[str | None] = mapped_column(String(128))
    claimed_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    heartbeat_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    progress: Mapped[dict[str, Any]] = mapped_column(default=dict)
    checkpoint_path: Mapped[str | None] = mapped_column(Text)
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    finished_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
