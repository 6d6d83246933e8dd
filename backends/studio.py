"""al-loop's side of a Label Studio project, through label-studio-sdk: connecting, handing out
rounds as tasks with predictions, and reconciling annotations (``al-loop sync``).

Decisions:

* The project is found by its title (``label_studio.project_title``); ``connect`` creates it or
  brings its settings up to date, so running it again is safe.
* Task data: ``image`` (the false colour the expert paints on) and one field per reference view
  (:mod:`al_loop.io.views`), all through the project's local-files storage; ``label_use`` (whether
  the label will validate or train) and ``about`` (scene, date, path/row, place, round and why the
  sampler chose it, in words), shown above the images; ``patch_id``, ``round``, ``rank``,
  ``acquisition`` (the round's score) and each score component. A task's id is kept on its round
  patch as ``<project>:<task>``.
* Order: only the chosen rounds are imported, each in rank order, and the project uses
  "Sequential sampling" (import order), so the label stream serves the sampler's order; a Data
  Manager view "al-loop rank" sorts by round and rank. Predictions' scores are the model's
  calibrated confidence (see :mod:`backends.predictor`), not the order.
"""

from __future__ import annotations

import base64
import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeAlias
from urllib.parse import quote

from rasterio.crs import CRS
from rasterio.warp import transform

from al_loop.config import Workspace
from al_loop.gate import describe_baseline, describe_change, provisional
from al_loop.io.landsat import path_row
from al_loop.io.views import patch_view_files
from al_loop.model.metrics import INTERVAL_LEVEL, iou_text
from al_loop.sampling.explain import why_chosen
from backends import SECRET_HEADER, accepted_labels
from backends.accepted_labels import AnnotationError
from backends.label_config import (
    ABOUT_KEY,
    IMAGE_DATA_KEY,
    LABEL_USE_KEY,
    PAINTED_VIEW,
    VIEW_DATA_KEYS,
    label_config,
    title_key,
)
from backends.label_writer import after_labels, write
from backends.predictor import ModelHolder, predict_patch_ids
from db import queries, registry
from db.models import Patch, RoundPatch
from db.session import Store

log = logging.getLogger(__name__)

# label_studio_sdk's client and its project objects. The SDK's type hints disagree with what Label Studio 1.23
# takes and answers (ids typed optional, tasks.update typed for string ids, import_tasks for typed requests, no
# task_ids on the import answer), so they are taken as untyped here; the end-to-end tests check the calls.
LabelStudioClient: TypeAlias = Any
Project: TypeAlias = Any

STORAGE_TITLE = "al-loop quicklooks"
LABEL_USE = {
    "val": "Validation patch: your label tests the model (it never trains on it)",
    "train": "Training patch: your label teaches the model",
    None: "Your label will teach or test the model (decided with the first training)",
}
REGION_HINT = (". Label only inside the yellow box (where the model is least sure); move or resize it if the "
               "doubt lies elsewhere. Outside it, nothing you paint is kept")
VIEW_TITLE = "al-loop rank"
PREDICTION_BATCH = 8


def backend_url(workspace: Workspace) -> str:
    cfg = workspace.config.backend
    return (cfg.url or f"http://{cfg.host}:{cfg.port}").rstrip("/")


def client(workspace: Workspace) -> LabelStudioClient:
    """An SDK client for the configured Label Studio (legacy token or personal access token)."""
    from label_studio_sdk.client import LabelStudio

    cfg = workspace.config.label_studio
    missing = [k for k in ("url", "api_key") if not getattr(cfg, k)]
    if missing:
        raise ValueError(f"Label Studio is not configured: set label_studio.{' and label_studio.'.join(missing)} "
                         "(or AL_LOOP_LABEL_STUDIO_URL / AL_LOOP_LABEL_STUDIO_API_KEY)")
    return LabelStudio(base_url=cfg.url.rstrip("/"), api_key=cfg.api_key)


def find_project(ls: LabelStudioClient, title: str) -> Project | None:
    return next((p for p in ls.projects.list() if p.title == title), None)


def project_or_fail(ls: LabelStudioClient, workspace: Workspace) -> Project:
    title = workspace.config.label_studio.project_title
    project = find_project(ls, title)
    if project is None:
        raise LookupError(f"no Label Studio project titled {title!r}: run `al-loop connect` first")
    return project


@dataclass
class ConnectReport:
    project_id: int
    created: bool
    model_version: str | None  # of the predictions pushed
    imported: dict[int, int] = field(default_factory=dict)  # round number -> tasks imported
    predictions: int = 0
    refreshed: int = 0  # open tasks whose data was brought up to date (views, about)


def connect(workspace: Workspace, store: Store, holder: ModelHolder | None = None) -> ConnectReport:
    """Create or update the project, its storage, ML backend and webhook; import the open
    rounds' patches as tasks with predictions (by ``holder``'s model, default the champion)."""
    if holder is None:
        holder = ModelHolder(workspace, store)
        holder.refresh()
    cfg = workspace.config
    ls = client(workspace)
    config_xml = label_config(polygons=cfg.label_studio.polygons)
    project = find_project(ls, cfg.label_studio.project_title)
    created = project is None
    if project is None:
        project = ls.projects.create(title=cfg.label_studio.project_title, label_config=config_xml)
    ls.projects.update(id=project.id, label_config=config_xml, sampling="Sequential sampling",
                       show_collab_predictions=True, description=project_description(store))
    _ensure_storage(ls, workspace, project.id)
    _ensure_ml_backend(ls, workspace, project.id)
    _ensure_webhook(ls, workspace, project.id)
    _ensure_rank_view(ls, project.id)
    report = ConnectReport(project.id, created, holder.version_title)
    with store.session() as session:
        rounds = queries.open_round_numbers(session)
    report.refreshed = refresh_open_tasks(ls, workspace, store, project.id)
    for number in rounds:
        tasks = import_round(ls, workspace, store, project.id, number)
        report.imported[number] = len(tasks)
    # Connecting again adds no prediction a task already holds from the served version (asking
    # for the tasks' model versions only: listing predictions would bring every mask along).
    predicted = {t.id for t in ls.tasks.list(project=project.id, include="id,predictions_model_versions")
                 if holder.version_title in _versions(t.predictions_model_versions)}
    unpredicted = {patch: task for patch, task in open_tasks(store, project.id).items() if task not in predicted}
    report.predictions = push_predictions(ls, workspace, store, holder, project.id, unpredicted)
    return report


def project_description(store: Store) -> str:
    """What the experts' labels did, for the project's description: the model served, its
    validation figures, and the newest candidate's gate decision in words."""
    lines = ["Glacier patches chosen by al-loop's uncertainty sampler."]
    with store.session() as session:
        summary = queries.status_summary(session)
        champion = registry.champion(session)
        figures = champion.metrics.get("val", {}) if champion else {}
        patches = champion.metrics.get("val_patches") if champion else None
    if champion is not None:
        iou = ", ".join(f"{name.replace('_', ' ')} {iou_text(values)}" for name, values in figures.items()
                        if name != "background" and values.get("iou") is not None)
        lines.append(
            f"Model served: {champion.name} (IoU on {patches} validation patches when trained, with its "
            f"{INTERVAL_LEVEL:.0%} bootstrap interval over them: {iou or 'n/a'})."
        )
        if (champion.metrics or {}).get("baseline"):
            lines.append(describe_baseline(champion.metrics["baseline"]).capitalize() + ".")
        weak = provisional(champion.metrics or {})
        if weak:
            lines.append(f"Provisional model ({weak}): its pre-labels are a rough guess.")
    newest = summary["newest"]
    if newest and (champion is None or newest["name"] != champion.name):
        lines.append(f"Newest candidate {newest['name']}: {newest['gate']}.")
    elif newest:
        lines.append(f"Gate: {newest['gate']}.")
    if newest:
        lines.append(f"Last training: {describe_change(newest['name'], newest['metrics'])}.")
    return "\n".join(lines)


def describe_models(ls: LabelStudioClient, workspace: Workspace, store: Store) -> None:
    """Bring the project's description up to date after a training."""
    project = project_or_fail(ls, workspace)
    ls.projects.update(id=project.id, description=project_description(store))


def _versions(value: list[str] | str | None) -> set[str]:
    """The model versions of a task's predictions, as Label Studio lists them."""
    if isinstance(value, list):
        return {str(v) for v in value}
    return {v.strip() for v in str(value or "").split(",") if v.strip()}


def record_author_emails(ls: LabelStudioClient, store: Store) -> int:
    """Store the email beside the Label Studio user id of annotation labels that lack one
    (webhooks carry the id only); returns how many labels changed."""
    with store.session() as session:
        ids = queries.annotation_authors_without_email(session)
    if not ids:
        return 0
    emails = {str(user.id): user.email for user in ls.users.list() if str(user.id) in ids and user.email}
    with store.session() as session:
        return accepted_labels.set_author_emails(session, emails)


def document_path(workspace: Workspace, path: Path) -> str:
    """``path`` relative to Label Studio's local-files document root (a clear error outside it)."""
    root = Path(workspace.config.label_studio.document_root or workspace.root).resolve()
    try:
        return Path(path).resolve().relative_to(root).as_posix()
    except ValueError:
        raise ValueError(f"{path} is not under Label Studio's document root {root} "
                         "(label_studio.document_root must match LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT)") from None


def _ensure_storage(ls: LabelStudioClient, workspace: Workspace, project_id: int) -> None:
    workspace.scenes_dir.mkdir(parents=True, exist_ok=True)  # Label Studio refuses a folder that is not there
    folder = str(workspace.scenes_dir.resolve())  # quicklooks and views lie under scenes/
    document_path(workspace, workspace.scenes_dir)  # fails early when outside the root
    if not any(s.path == folder for s in ls.import_storage.local.list(project=project_id)):
        ls.import_storage.local.create(project=project_id, path=folder, title=STORAGE_TITLE, use_blob_urls=False)


def _ensure_ml_backend(ls: LabelStudioClient, workspace: Workspace, project_id: int) -> None:
    cfg = workspace.config.backend
    auth = dict(auth_method="BASIC_AUTH", basic_auth_user=cfg.username, basic_auth_pass=cfg.password)
    url = backend_url(workspace)
    existing = next((m for m in ls.ml.list(project=project_id) if m.url.rstrip("/") == url), None)
    if existing is None:
        ls.ml.create(project=project_id, url=url, title="al-loop", is_interactive=False, **auth)
    else:
        ls.ml.update(id=existing.id, project=project_id, url=url, **auth)


def _ensure_webhook(ls: LabelStudioClient, workspace: Workspace, project_id: int) -> None:
    """The webhook Label Studio posts annotation events to, carrying the auth headers (the
    one Label Studio creates for an ML backend has none)."""
    cfg = workspace.config.backend
    token = base64.b64encode(f"{cfg.username}:{cfg.password}".encode()).decode()
    headers = {"Authorization": f"Basic {token}", SECRET_HEADER: cfg.webhook_secret}
    url = backend_url(workspace) + "/webhook"
    hooks = [h for h in ls.webhooks.list(project=project_id) if h.url.rstrip("/").startswith(backend_url(workspace))]
    settings = dict(url=url, headers=headers, send_payload=True, send_for_all_actions=True, is_active=True)
    if hooks:
        for hook in hooks:
            ls.webhooks.update(id=hook.id, **settings)
    else:
        ls.webhooks.create(project=project_id, **settings)


def _ensure_rank_view(ls: LabelStudioClient, project_id: int) -> None:
    if not any((v.data or {}).get("title") == VIEW_TITLE for v in ls.views.list(project=project_id)):
        ls.views.create(project=project_id, data={"title": VIEW_TITLE,
                                                  "ordering": ["tasks:data.round", "tasks:data.rank"]})


def _external_id(project_id: int, task_id: int) -> str:
    return f"{project_id}:{task_id}"


def import_round(ls: LabelStudioClient, workspace: Workspace, store: Store, project_id: int, number: int
                 ) -> dict[int, int]:
    """Import a round's patches not yet in the project as tasks; patch id -> task id. A patch
    that already has a task (it went back to the pool when its annotation was deleted) keeps it:
    the task's data is brought up to date instead of a second task being made."""
    prefix = f"{project_id}:"
    with store.session() as session:
        round_patches = queries.round_patches(session, number)
        todo = [rp for rp in round_patches if not (rp.external_id or "").startswith(prefix)]
        existing = queries.patch_tasks(session, [rp.patch_id for rp in todo], prefix)
        strategy = round_patches[0].round.strategy if round_patches else ""
        components = [rp.components for rp in round_patches]
        patches = {p.id: p for p in queries.patches_by_id(session, [rp.patch_id for rp in todo], with_scenes=True)}
        data = {rp.patch_id: task_data(workspace, patches[rp.patch_id], number, rp, strategy, components)
                for rp in todo}
    reused = {rp.patch_id: existing[rp.patch_id] for rp in todo if rp.patch_id in existing}
    for patch_id, task_id in reused.items():
        ls.tasks.update(id=task_id, data=data[patch_id])
    new = [rp for rp in todo if rp.patch_id not in reused]
    created: dict[int, int] = {}
    if new:
        response = ls.projects.import_tasks(id=project_id, request=[data[rp.patch_id] for rp in new],
                                            return_task_ids=True)
        task_ids = list(response.task_ids)
        if len(task_ids) != len(new):
            raise RuntimeError(f"Label Studio created {len(task_ids)} tasks for {len(new)} patches of round {number}")
        created = {rp.patch_id: task_id for rp, task_id in zip(new, task_ids, strict=True)}
    tasks = {**reused, **created}
    with store.session() as session:
        for rp in queries.round_patches(session, number):
            if rp.patch_id in tasks:
                rp.external_id = _external_id(project_id, tasks[rp.patch_id])
    return tasks


def refresh_open_tasks(ls: LabelStudioClient, workspace: Workspace, store: Store, project_id: int) -> int:
    """Bring the data of the project's open, unlabelled tasks up to date (a project made by an
    older al-loop gets the views and the description its new labeling config shows)."""
    tasks = open_tasks(store, project_id)
    with store.session() as session:
        rows = queries.open_round_patches(session, list(tasks))
        patches = {p.id: p for p in queries.patches_by_id(session, [rp.patch_id for rp in rows], with_scenes=True)}
        data = {}
        for rp in rows:
            siblings = [other.components for other in rp.round.patches]
            data[rp.patch_id] = task_data(workspace, patches[rp.patch_id], rp.round.number, rp, rp.round.strategy,
                                          siblings)
    for patch_id, values in data.items():
        ls.tasks.update(id=tasks[patch_id], data=values)
    return len(data)


def task_data(workspace: Workspace, patch: Patch, number: int, rp: RoundPatch, strategy: str,
              round_components: list[dict[str, Any]]) -> dict[str, Any]:
    """A round patch's task data: its views (written if need be) and what is known about it."""
    views, titles = patch_view_files(workspace, patch)
    url = {key: "/data/local-files/?d=" + quote(document_path(workspace, path)) for key, path in views.items()}
    size = len(round_components)
    about = [*_describe_scene(patch), f"round {number}, rank {rp.rank} of {size}",
             why_chosen(rp.components, round_components, strategy)]
    return {
        IMAGE_DATA_KEY: url[PAINTED_VIEW],
        **{key: url[key] for key in VIEW_DATA_KEYS},
        **{title_key(key): title + (" (paint here)" if key == PAINTED_VIEW else "") for key, title in titles.items()},
        LABEL_USE_KEY: LABEL_USE[patch.split] + (REGION_HINT if rp.region else ""),
        ABOUT_KEY: " · ".join(about),
        accepted_labels.PATCH_ID_KEY: patch.id,
        "scene": patch.scene.name,
        "round": number,
        "rank": rp.rank,
        "acquisition": rp.score,
        **{f"score_{k}": v for k, v in rp.components.items()},
    }


def _describe_scene(patch: Patch) -> list[str]:
    """Scene, acquisition date, WRS-2 path/row and the patch centre in degrees, as far as known."""
    scene = patch.scene
    words = [f"scene {scene.name}"]
    if scene.acquired:
        words.append(f"acquired {scene.acquired.isoformat()}")
    found = path_row(scene.name)
    if found:
        words.append(f"path {found[0]:03d} row {found[1]:03d}")
    if scene.crs and patch.bounds:
        minx, miny, maxx, maxy = patch.bounds
        xs, ys = transform(CRS.from_wkt(scene.crs), "EPSG:4326", [(minx + maxx) / 2], [(miny + maxy) / 2])
        words.append(f"centre {abs(ys[0]):.4f}° {'N' if ys[0] >= 0 else 'S'}, "
                     f"{abs(xs[0]):.4f}° {'E' if xs[0] >= 0 else 'W'}")
    return words


def open_tasks(store: Store, project_id: int) -> dict[int, int]:
    """Patch id -> task id of the project's tasks in open rounds whose patch has no label yet."""
    with store.session() as session:
        rows = queries.unlabelled_open_tasks(session, f"{project_id}:")
    return {patch_id: int(external.split(":")[1]) for patch_id, external in rows}


def push_predictions(ls: LabelStudioClient, workspace: Workspace, store: Store, holder: ModelHolder, project_id: int,
                     tasks: dict[int, int]) -> int:
    """Predict ``tasks`` (patch id -> task id) with the served model and store the predictions
    in Label Studio; the project then serves that model version. Returns how many."""
    if holder.current is None or not tasks:
        return 0
    patch_ids = list(tasks)
    for start in range(0, len(patch_ids), PREDICTION_BATCH):
        batch = patch_ids[start : start + PREDICTION_BATCH]
        for patch_id, prediction in zip(batch, predict_patch_ids(workspace, store, holder, batch), strict=True):
            ls.predictions.create(task=tasks[patch_id], project=project_id, **prediction)
    ls.projects.update(id=project_id, model_version=holder.version_title)
    return len(patch_ids)


@dataclass
class SyncReport:
    project_id: int
    tasks: int
    outcomes: Counter
    problems: list[str]
    closed_rounds: list[int]
    job_id: int | None


def sync(workspace: Workspace, store: Store) -> SyncReport:
    """Reconcile the store with the project's annotations: store the missing or changed ones,
    retire labels whose annotation was deleted. Annotations that cannot be read are reported,
    not stored."""
    ls = client(workspace)
    project = project_or_fail(ls, workspace)
    outcomes: Counter[str] = Counter()
    problems, seen, n_tasks = [], set(), 0
    sizes = accepted_labels.PatchSizes(store)
    for task in ls.tasks.list(project=project.id, fields="all"):
        n_tasks += 1
        task_dict = {"id": task.id, "data": task.data}
        for annotation in task.annotations or []:
            annotation = annotation if isinstance(annotation, dict) else annotation.dict()
            seen.add(annotation.get("id"))
            try:
                checked = accepted_labels.read_annotation(sizes, project.id, annotation, task_dict)
                with store.session() as session:
                    outcomes += write(session, checked)
            except AnnotationError as exc:
                problems.append(str(exc))
                log.warning("annotation not stored: %s", exc)
    with store.session() as session:
        gone = [i for i in accepted_labels.accepted_annotation_ids(session, project.id) if i not in seen]
        outcomes["retired"] += accepted_labels.retire(session, project.id, gone)
        closed, job_id = after_labels(session, workspace)
    record_author_emails(ls, store)
    return SyncReport(project.id, n_tasks, outcomes, problems, closed, job_id)
