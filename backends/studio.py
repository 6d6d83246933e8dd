"""al-loop's side of a Label Studio project, through label-studio-sdk: connecting, handing out
rounds as tasks with predictions, and reconciling annotations (``al-loop sync``).

Decisions:

* The project is found by its title (``label_studio.project_title``); ``connect`` creates it or
  brings its settings up to date, so running it again is safe.
* Task data: ``image`` (the patch's natural-colour quicklook through the project's local-files
  storage), ``label_use`` (whether the label will validate or train, shown above the image),
  ``patch_id``, ``round``, ``rank``, ``acquisition`` (the round's score) and each score component. A task's id is kept on its round patch as ``<project>:<task>``.
* Order: predictions carry the round rank as score (see :mod:`backends.predictor`), the project
  uses "Uncertainty sampling" on the served model version, and a Data Manager view "al-loop
  rank" sorts by round and rank, so experts get the sampler's order either way.
"""

from __future__ import annotations

import base64
import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

from sqlalchemy import select

from al_loop.config import Workspace
from backends import annotations
from backends.annotations import AnnotationError
from backends.app import SECRET_HEADER
from backends.label_config import IMAGE_DATA_KEY, LABEL_USE_KEY, label_config
from backends.label_writer import after_labels, write
from backends.predictor import ModelHolder, predict_patch_ids
from db import queries, registry
from db.models import Patch, Round, RoundPatch
from db.session import Store

log = logging.getLogger(__name__)

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


def client(workspace: Workspace):
    """An SDK client for the configured Label Studio (legacy token or personal access token)."""
    from label_studio_sdk.client import LabelStudio

    cfg = workspace.config.label_studio
    missing = [k for k in ("url", "api_key") if not getattr(cfg, k)]
    if missing:
        raise ValueError(f"Label Studio is not configured: set label_studio.{' and label_studio.'.join(missing)} "
                         "(or AL_LOOP_LABEL_STUDIO_URL / AL_LOOP_LABEL_STUDIO_API_KEY)")
    return LabelStudio(base_url=cfg.url.rstrip("/"), api_key=cfg.api_key)


def find_project(ls, title: str):
    return next((p for p in ls.projects.list() if p.title == title), None)


def project_or_fail(ls, workspace: Workspace):
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
    if created:
        project = ls.projects.create(title=cfg.label_studio.project_title, label_config=config_xml)
    ls.projects.update(id=project.id, label_config=config_xml, sampling="Uncertainty sampling",
                       show_collab_predictions=True, description=project_description(store))
    _ensure_storage(ls, workspace, project.id)
    _ensure_ml_backend(ls, workspace, project.id)
    _ensure_webhook(ls, workspace, project.id)
    _ensure_rank_view(ls, project.id)
    report = ConnectReport(project.id, created, holder.version_name)
    with store.session() as session:
        rounds = session.scalars(select(Round.number).where(Round.status == "open").order_by(Round.number)).all()
    for number in rounds:
        tasks = import_round(ls, workspace, store, project.id, number)
        report.imported[number] = len(tasks)
    # Connecting again adds no prediction a task already holds from the served version (asking
    # for the tasks' model versions only: listing predictions would bring every mask along).
    predicted = {t.id for t in ls.tasks.list(project=project.id, include="id,predictions_model_versions")
                 if holder.version_name in _versions(t.predictions_model_versions)}
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
        iou = ", ".join(f"{name.replace('_', ' ')} {values['iou']:.2f}" for name, values in figures.items()
                        if name != "background" and values.get("iou") is not None)
        lines.append(f"Model served: {champion.name} (IoU on {patches} validation patches when trained: {iou or 'n/a'}).")
    newest = summary["newest"]
    if newest and (champion is None or newest["name"] != champion.name):
        lines.append(f"Newest candidate {newest['name']}: {newest['gate']}.")
    elif newest:
        lines.append(f"Gate: {newest['gate']}.")
    return "\n".join(lines)


def describe_models(ls, workspace: Workspace, store: Store) -> None:
    """Bring the project's description up to date after a training."""
    project = project_or_fail(ls, workspace)
    ls.projects.update(id=project.id, description=project_description(store))


def _versions(value) -> set[str]:
    """The model versions of a task's predictions, as Label Studio lists them."""
    if isinstance(value, list):
        return {str(v) for v in value}
    return {v.strip() for v in str(value or "").split(",") if v.strip()}


def record_author_emails(ls, store: Store) -> int:
    """Store the email beside the Label Studio user id of annotation labels that lack one
    (webhooks carry the id only); returns how many labels changed."""
    with store.session() as session:
        ids = queries.annotation_authors_without_email(session)
    if not ids:
        return 0
    emails = {str(user.id): user.email for user in ls.users.list() if str(user.id) in ids and user.email}
    with store.session() as session:
        return annotations.set_author_emails(session, emails)


def document_path(workspace: Workspace, path: Path) -> str:
    """``path`` relative to Label Studio's local-files document root (a clear error outside it)."""
    root = Path(workspace.config.label_studio.document_root or workspace.root).resolve()
    try:
        return Path(path).resolve().relative_to(root).as_posix()
    except ValueError:
        raise ValueError(f"{path} is not under Label Studio's document root {root} "
                         "(label_studio.document_root must match LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT)") from None


def _ensure_storage(ls, workspace: Workspace, project_id: int) -> None:
    workspace.scenes_dir.mkdir(parents=True, exist_ok=True)  # Label Studio refuses a folder that is not there
    folder = str(workspace.scenes_dir.resolve())  # quicklooks lie in scenes/<scene>/quicklooks/
    document_path(workspace, workspace.scenes_dir)  # fails early when outside the root
    if not any(s.path == folder for s in ls.import_storage.local.list(project=project_id)):
        ls.import_storage.local.create(project=project_id, path=folder, title=STORAGE_TITLE, use_blob_urls=False)


def _ensure_ml_backend(ls, workspace: Workspace, project_id: int) -> None:
    cfg = workspace.config.backend
    auth = dict(auth_method="BASIC_AUTH", basic_auth_user=cfg.username, basic_auth_pass=cfg.password)
    url = backend_url(workspace)
    existing = next((m for m in ls.ml.list(project=project_id) if m.url.rstrip("/") == url), None)
    if existing is None:
        ls.ml.create(project=project_id, url=url, title="al-loop", is_interactive=False, **auth)
    else:
        ls.ml.update(id=existing.id, project=project_id, url=url, **auth)


def _ensure_webhook(ls, workspace: Workspace, project_id: int) -> None:
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


def _ensure_rank_view(ls, project_id: int) -> None:
    if not any((v.data or {}).get("title") == VIEW_TITLE for v in ls.views.list(project=project_id)):
        ls.views.create(project=project_id, data={"title": VIEW_TITLE,
                                                  "ordering": ["tasks:data.round", "tasks:data.rank"]})


def _external_id(project_id: int, task_id: int) -> str:
    return f"{project_id}:{task_id}"


def import_round(ls, workspace: Workspace, store: Store, project_id: int, number: int) -> dict[int, int]:
    """Import a round's patches not yet in the project as tasks; patch id -> task id. A patch
    that already has a task (it went back to the pool when its annotation was deleted) keeps it:
    the task's data is brought up to date instead of a second task being made."""
    prefix = f"{project_id}:"
    with store.session() as session:
        round_patches = session.scalars(
            select(RoundPatch).join(Round).where(Round.number == number).order_by(RoundPatch.rank)
        ).all()
        todo = [rp for rp in round_patches if not (rp.external_id or "").startswith(prefix)]
        existing = queries.patch_tasks(session, [rp.patch_id for rp in todo], prefix)
        data = {rp.patch_id: _task_data(workspace, session.get(Patch, rp.patch_id), number, rp) for rp in todo}
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
        created = {rp.patch_id: task_id for rp, task_id in zip(new, task_ids)}
    tasks = {**reused, **created}
    with store.session() as session:
        for rp in todo:
            session.get(RoundPatch, rp.id).external_id = _external_id(project_id, tasks[rp.patch_id])
    return tasks


def _task_data(workspace: Workspace, patch: Patch, number: int, rp: RoundPatch) -> dict:
    if not patch.quicklook_rgb:
        raise ValueError(f"patch {patch.id} has no quicklook to show; re-ingest with ingest.quicklooks = true")
    image = workspace.resolve(patch.quicklook_rgb)
    return {
        IMAGE_DATA_KEY: "/data/local-files/?d=" + quote(document_path(workspace, image)),
        LABEL_USE_KEY: LABEL_USE[patch.split] + (REGION_HINT if rp.region else ""),
        annotations.PATCH_ID_KEY: patch.id,
        "scene": patch.scene.name,
        "round": number,
        "rank": rp.rank,
        "acquisition": rp.score,
        **{f"score_{k}": v for k, v in rp.components.items()},
    }


def open_tasks(store: Store, project_id: int) -> dict[int, int]:
    """Patch id -> task id of the project's tasks in open rounds whose patch has no label yet."""
    with store.session() as session:
        rows = session.execute(
            select(RoundPatch.patch_id, RoundPatch.external_id).join(Round)
            .where(Round.status == "open", RoundPatch.external_id.startswith(f"{project_id}:"))
            .where(RoundPatch.patch_id.not_in(queries.labelled_patch_ids()))
            .order_by(Round.number, RoundPatch.rank)
        ).all()
    return {patch_id: int(external.split(":")[1]) for patch_id, external in rows}


def push_predictions(ls, workspace: Workspace, store: Store, holder: ModelHolder, project_id: int,
                     tasks: dict[int, int]) -> int:
    """Predict ``tasks`` (patch id -> task id) with the served model and store the predictions
    in Label Studio; the project then serves that model version. Returns how many."""
    if holder.current is None or not tasks:
        return 0
    patch_ids = list(tasks)
    for start in range(0, len(patch_ids), PREDICTION_BATCH):
        batch = patch_ids[start : start + PREDICTION_BATCH]
        for patch_id, prediction in zip(batch, predict_patch_ids(workspace, store, holder, batch)):
            ls.predictions.create(task=tasks[patch_id], project=project_id, **prediction)
    ls.projects.update(id=project_id, model_version=holder.version_name)
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
    outcomes, problems, seen, n_tasks = Counter(), [], set(), 0
    for task in ls.tasks.list(project=project.id, fields="all"):
        n_tasks += 1
        task_dict = {"id": task.id, "data": task.data}
        for annotation in task.annotations or []:
            annotation = annotation if isinstance(annotation, dict) else annotation.dict()
            seen.add(annotation.get("id"))
            try:
                with store.session() as session:
                    checked = annotations.read_annotation(session, project.id, annotation, task_dict)
                    outcomes += write(session, checked)
            except AnnotationError as exc:
                problems.append(str(exc))
                log.warning("annotation not stored: %s", exc)
    with store.session() as session:
        gone = [i for i in annotations.accepted_annotation_ids(session, project.id) if i not in seen]
        outcomes["retired"] += annotations.retire(session, project.id, gone)
        closed, job_id = after_labels(session, workspace)
    record_author_emails(ls, store)
    return SyncReport(project.id, n_tasks, outcomes, problems, closed, job_id)
