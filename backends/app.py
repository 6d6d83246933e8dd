"""The HTTP protocol Label Studio 1.23 speaks to an ML backend (FastAPI).

| route | Label Studio's timeout | here |
|---|---|---|
| ``GET /health`` | 1 s | no auth; says which model is served |
| ``POST /setup`` | 3 s | checks the project's labeling config once per project (cached), returns the model version |
| ``POST /predict`` | 100 s | one prediction per task, in order, batched; 4xx names a bad task |
| ``POST /webhook`` | 1 s | checks, answers once committed (group commit; 202 if the writer lags); follow-ups after |
| ``GET /versions`` | 3 s | the registry's versions |

Every route but ``/health`` needs HTTP Basic auth; ``/webhook`` also needs the shared secret in
``X-Al-Loop-Secret`` (``al-loop connect`` sets both headers on the project's webhook).
"""

from __future__ import annotations

import json
import secrets
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Header, HTTPException, Request
from fastapi.responses import JSONResponse
from fastapi.security import HTTPBasic, HTTPBasicCredentials

from backends import SECRET_HEADER, accepted_labels
from backends.accepted_labels import Annotation, AnnotationError
from backends.inbox import Retire
from backends.label_config import ALL_LABELS, BRUSH_NAME, IMAGE_NAME, POLYGON_NAME
from backends.predictor import ModelUnavailable, PredictionError, predict_patch_ids
from db import registry

if TYPE_CHECKING:
    from backends.service import Backend

MAX_BODY_BYTES = 32 * 2**20  # a 512x512 brush annotation, even RLE of the legacy encoder, is a few MB
STORE_TIMEOUT_S = 0.8  # Label Studio gives a webhook 1 s: answer 202 (queued) before that
ANNOTATION_EVENTS = ("ANNOTATION_CREATED", "ANNOTATION_UPDATED")
IGNORED_EVENTS = ("TASKS_CREATED", "TASKS_DELETED", "PROJECT_CREATED", "PROJECT_UPDATED", "PROJECT_DELETED",
                  "ANNOTATIONS_CREATED", "LABEL_LINK_CREATED", "LABEL_LINK_UPDATED", "LABEL_LINK_DELETED",
                  "REVIEW_CREATED", "REVIEW_UPDATED", "REVIEWS_DELETED")


def check_label_config(config_xml: str) -> None:
    """The project must use al-loop's tags and labels, else its annotations cannot be read."""
    problem = _label_config_problem(config_xml)
    if problem:
        raise ValueError(problem)


@lru_cache(maxsize=16)  # Label Studio sends the same config with every /predict
def _label_config_problem(config_xml: str) -> str | None:
    try:
        _check_label_config(config_xml)
    except ValueError as exc:
        return str(exc)
    return None


def _check_label_config(config_xml: str) -> None:
    from label_studio_sdk.label_interface import LabelInterface

    try:
        interface = LabelInterface(config_xml)
        controls = {c.name: c for c in interface.controls}
    except Exception as exc:
        raise ValueError(f"the labeling config does not parse: {exc}") from None
    brush = controls.get(BRUSH_NAME)
    if brush is None or brush.tag.lower() != "brushlabels" or IMAGE_NAME not in brush.to_name:
        raise ValueError(f"the labeling config needs BrushLabels name={BRUSH_NAME!r} toName={IMAGE_NAME!r}")
    for control in (brush, controls.get(POLYGON_NAME)):
        if control is not None:
            unknown = sorted(set(control.labels) - set(ALL_LABELS))
            if unknown:
                raise ValueError(f"{control.name} offers labels al-loop does not know: {unknown}; "
                                 f"expected some of {list(ALL_LABELS)}")


@dataclass
class AppState:
    """What the routes share: the backend (model, store, inbox, writer) and the projects whose
    labeling config /setup has already checked."""

    backend: Backend
    checked_configs: dict[str, str] = field(default_factory=dict)


def create_app(backend: Backend) -> FastAPI:
    """The app for ``backend``."""
    cfg = backend.workspace.config.backend
    empty = [f"backend.{key}" for key in ("password", "webhook_secret") if not getattr(cfg, key)]
    if empty:  # an empty secret would let anyone in
        raise ValueError(f"{' and '.join(empty)} empty: set them in al-loop.toml or the environment "
                         "(`al-loop init` writes random ones into a new workspace)")
    app = FastAPI(title="al-loop ML backend", docs_url=None, redoc_url=None)
    app.state.al_loop = AppState(backend)
    app.add_exception_handler(HTTPException, _error)  # type: ignore[arg-type]  # Starlette types the base class
    app.include_router(public)
    app.include_router(protected)
    return app


def _state(request: Request) -> AppState:
    return request.app.state.al_loop


State = Annotated[AppState, Depends(_state)]
basic = HTTPBasic(auto_error=False)


def authorised(state: State, credentials: HTTPBasicCredentials | None = Depends(basic)) -> None:
    cfg = state.backend.workspace.config.backend
    ok = credentials is not None and all((
        secrets.compare_digest(credentials.username.encode(), cfg.username.encode()),
        secrets.compare_digest(credentials.password.encode(), cfg.password.encode()),
    ))
    if not ok:
        raise HTTPException(401, "HTTP Basic auth required", headers={"WWW-Authenticate": "Basic"})


async def json_object(request: Request) -> dict[str, Any]:
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > MAX_BODY_BYTES):
        raise HTTPException(413, f"the body is larger than {MAX_BODY_BYTES // 2**20} MiB")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise HTTPException(413, f"the body is larger than {MAX_BODY_BYTES // 2**20} MiB")
        chunks.append(chunk)
    try:
        body = json.loads(b"".join(chunks))
    except (ValueError, RecursionError):  # RecursionError: nested deeper than Python's stack
        raise HTTPException(400, "the body is not JSON (or nests deeper than any Label Studio payload)") from None
    if not isinstance(body, dict):
        raise HTTPException(400, f"the body must be a JSON object, found {type(body).__name__}")
    return body


Body = Annotated[dict[str, Any], Depends(json_object)]


async def _error(_request: Request, exc: HTTPException) -> JSONResponse:
    return JSONResponse({"error": exc.detail}, status_code=exc.status_code, headers=exc.headers)


def _stored(future: Future, path: Path) -> dict[str, int] | None:
    """Wait for the writer's commit: its outcome, or None while the writer is behind (the
    delivery is durable in the inbox and will be written). A delivery the store refused for
    good was set aside: a 503 that says so, without the database's own words."""
    try:
        return dict(future.result(timeout=STORE_TIMEOUT_S))
    except FutureTimeout:
        return None
    except Exception as exc:
        if path.exists():  # the store is unreachable for now: it stays in the inbox
            return None
        raise HTTPException(503, f"the delivery could not be stored ({type(exc).__name__}); it was set aside "
                                 "in the backend's inbox/failed/ with the reason") from None


def _store(backend: Backend, item: Annotation | Retire) -> dict[str, int] | None:
    """Make a checked delivery durable, hand it to the writer and wait for its commit."""
    try:
        path = backend.inbox.put(item)
    except OSError as exc:
        raise HTTPException(503, f"the delivery could not be made durable ({exc.strerror}): try again") from None
    return _stored(backend.writer.put(item, path), path)


def _answer(outcome: dict[str, int] | None, **fields: Any) -> JSONResponse:
    if outcome is None:
        return JSONResponse({"status": "queued", **fields}, status_code=202)
    return JSONResponse({"status": "stored", **fields, "outcome": outcome})


public = APIRouter()
protected = APIRouter(dependencies=[Depends(authorised)])


@public.get("/health")
def health(state: State) -> dict[str, Any]:
    holder = state.backend.holder
    status = {"status": "UP", "model_class": "al-loop", "model_version": holder.version_title}
    if holder.problem:
        status["problem"] = holder.problem
    return status


@protected.post("/setup")
def setup(state: State, body: Body) -> dict[str, Any]:
    project, schema = str(body.get("project", "")), body.get("schema")
    if isinstance(schema, str) and state.checked_configs.get(project) != schema:
        try:
            check_label_config(schema)
        except ValueError as exc:
            raise HTTPException(422, f"project {project}: {exc}") from None
        state.checked_configs[project] = schema
    return {"model_version": state.backend.holder.version_title or "none"}


@protected.post("/predict")
def predict(state: State, body: Body) -> dict[str, Any]:
    patch_ids = _task_patch_ids(body.get("tasks"))
    config_xml = body.get("label_config") if isinstance(body.get("label_config"), str) else None
    if config_xml is not None:
        try:
            check_label_config(config_xml)
        except ValueError as exc:
            raise HTTPException(422, f"label_config: {exc}") from None
    backend = state.backend
    backend.holder.refresh(force=False)
    try:
        results = predict_patch_ids(backend.workspace, backend.store, backend.holder, patch_ids, config_xml)
    except ModelUnavailable as exc:
        raise HTTPException(503, str(exc)) from None
    except PredictionError as exc:
        raise HTTPException(404, str(exc)) from None
    except ValueError as exc:  # e.g. polygons asked of a project without a polygon tool
        raise HTTPException(422, str(exc)) from None
    return {"results": results}


def _task_patch_ids(tasks: Any) -> list[int]:
    if not isinstance(tasks, list) or not tasks:
        raise HTTPException(400, "tasks must be a non-empty list of task objects")
    patch_ids = []
    for k, task in enumerate(tasks):
        data = task.get("data") if isinstance(task, dict) else None
        patch_id = data.get(accepted_labels.PATCH_ID_KEY) if isinstance(data, dict) else None
        try:
            patch_ids.append(accepted_labels.patch_id(patch_id, f"data.{accepted_labels.PATCH_ID_KEY}"))
        except AnnotationError as exc:
            task_id = task.get("id") if isinstance(task, dict) else None
            raise HTTPException(422, f"task {k} (id {task_id}): {exc}") from None
    return patch_ids


@protected.post("/webhook")
def webhook(state: State, body: Body, secret: str | None = Header(None, alias=SECRET_HEADER)) -> Any:
    backend = state.backend
    expected = backend.workspace.config.backend.webhook_secret
    if secret is None or not secrets.compare_digest(secret.encode(), expected.encode()):
        raise HTTPException(403, f"missing or wrong {SECRET_HEADER} header")
    action = body.get("action")
    try:
        if action in ANNOTATION_EVENTS:
            project = accepted_labels.project_id(body)
            annotation = accepted_labels.read_annotation(backend.patch_sizes, project, body.get("annotation"),
                                                         body.get("task"))
            return _answer(_store(backend, annotation), annotation=annotation.annotation_id)
        if action == "ANNOTATIONS_DELETED":
            retire = _retirement(accepted_labels.project_id(body), body.get("annotations"))
            return _answer(_store(backend, retire), retire=list(retire.annotation_ids))
    except AnnotationError as exc:
        raise HTTPException(422, f"{action}: {exc}") from None
    if action == "START_TRAINING":
        job_id = backend.queue_training("label_studio")
        return {"status": "queued" if job_id else "a training job is already queued or running", "job": job_id}
    if action in IGNORED_EVENTS:
        return {"status": "ignored"}
    raise HTTPException(400, f"unknown webhook action {str(action)[:80]!r}")


def _retirement(project: int, deleted: Any) -> Retire:
    if not isinstance(deleted, list) or not deleted or not all(isinstance(a, dict) for a in deleted):
        raise AnnotationError("annotations must be a non-empty list of objects with an integer id")
    return Retire(project, tuple(accepted_labels.annotation_id(a.get("id"), f"annotations[{k}].id")
                                 for k, a in enumerate(deleted)))


@protected.get("/versions")
def versions(state: State) -> dict[str, Any]:
    with state.backend.store.session() as session:
        found = registry.versions(session)
        return {"versions": [v.name for v in found], "statuses": {v.name: v.status for v in found}}
