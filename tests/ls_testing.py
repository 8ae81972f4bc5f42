"""Label Studio operations only the tests (and their simulated annotators) need.

They work on a :class:`integrations.label_studio.LabelStudioClient` from outside, through its
retrying ``_call`` and SDK handle, so the production client keeps only what dataeff itself uses.
"""

from __future__ import annotations

from integrations.label_studio import (
    LabelStudioClient,
    LabelStudioError,
    ProjectNotFound,
)


def create_annotation(
    client: LabelStudioClient,
    project_id: int,
    dataeff_id: str,
    answer: str,
    *,
    annotator_id: int | None = None,
    ground_truth: bool = False,
    cancelled: bool = False,
) -> int:
    """Annotate item ``dataeff_id`` with ``answer`` and return the annotation id.

    Raises:
        InvalidLabel: ``answer`` is not one of the project's labels (or is empty).
        InvalidTask: no task carries that ``dataeff_id``.
    """
    ids = client.create_annotations(
        project_id, {dataeff_id: answer}, annotator_id=annotator_id, ground_truth=ground_truth, cancelled=cancelled
    )
    return ids[str(dataeff_id)]


def update_annotation(client: LabelStudioClient, project_id: int, annotation_id: int, answer: str) -> None:
    """Replace the answer of an annotation (its ``updated_at`` moves)."""
    result = client._schema(project_id).result(answer, f"annotation {annotation_id} of project {project_id}")
    client._call(
        f"update annotation {annotation_id}",
        lambda: client._sdk.annotations.update(id=annotation_id, result=result),
        not_found=LabelStudioError(f"annotation {annotation_id} not found at {client.url}"),
    )


def delete_annotation(client: LabelStudioClient, annotation_id: int) -> None:
    """Delete an annotation (Label Studio keeps no trace of it)."""
    client._call(
        f"delete annotation {annotation_id}",
        lambda: client._sdk.annotations.delete(id=annotation_id),
        not_found=LabelStudioError(f"annotation {annotation_id} not found at {client.url}"),
    )


def ensure_user(client: LabelStudioClient, email: str) -> int:
    """Id of the user with ``email``, created when missing (e.g. a second annotator)."""
    users = client._call("list users", lambda: list(client._sdk.users.list()))
    for u in users:
        if u.email == email:
            return int(u.id)
    user = client._call(
        f"create user {email!r}",
        lambda: client._sdk.users.create(email=email, username=email.split("@")[0]),
        idempotent=False,
    )
    return int(user.id)


def predictions(client: LabelStudioClient, project_id: int) -> list[dict]:
    """Predictions of a project as plain dicts ``{task_id, model_version, score, result}``."""
    client._project(project_id)
    found = client._call(
        f"list the predictions of project {project_id}",
        lambda: list(client._sdk.predictions.list(project=project_id)),
    )
    return [{"task_id": p.task, "model_version": p.model_version, "score": p.score, "result": p.result} for p in found]


def delete_project(client: LabelStudioClient, project_id: int) -> None:
    """Delete a project and everything in it."""
    client._call(
        f"delete project {project_id}",
        lambda: client._sdk.projects.delete(id=project_id),
        not_found=ProjectNotFound(f"Label Studio project {project_id} not found at {client.url}"),
    )
