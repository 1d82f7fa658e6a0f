"""A task as a FHIR R4 `Task` resource (read-only view)."""

from __future__ import annotations

from typing import Any

from services.coordinator.store import TaskView

# Our states in FHIR's Task.status value set.
FHIR_STATUS = {
    "proposed": "requested",
    "accepted": "accepted",
    "in_progress": "in-progress",
    "completed": "completed",
    "cancelled": "cancelled",
}
ROLE_SYSTEM = "https://painpath.dev/fhir/CodeSystem/care-team-role"
TASK_SYSTEM = "https://painpath.dev/fhir/CodeSystem/care-task"


def fhir_task(task: TaskView) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": "Task",
        "id": str(task.id),
        "meta": {"versionId": str(task.version), "lastUpdated": task.updated_at.isoformat()},
        "status": FHIR_STATUS[task.state],
        "intent": "plan",
        "priority": task.priority,
        "code": {"coding": [{"system": TASK_SYSTEM, "code": task.key}], "text": task.title},
        "description": task.description,
        "for": {"reference": f"Patient/{task.patient_id}"},
        "basedOn": [{"reference": f"CarePlan/{task.patient_id}"}],
        "authoredOn": task.created_at.isoformat(),
        "lastModified": task.updated_at.isoformat(),
        "performerType": [
            {"coding": [{"system": ROLE_SYSTEM, "code": task.role}], "text": task.role}
        ],
        "reasonCode": {"text": task.reason},
        "restriction": {"period": {"end": task.due_on.isoformat()}},
    }
    if task.assignee:
        resource["owner"] = {"reference": f"Practitioner/{task.assignee}"}
    if task.scheduled_on:
        resource["executionPeriod"] = {"start": task.scheduled_on.isoformat()}
    if task.outcome:
        resource["output"] = [{"type": {"text": "outcome"}, "valueString": task.outcome}]
    if task.cancel_reason:
        resource["statusReason"] = {"text": task.cancel_reason}
    if task.late:
        resource["businessStatus"] = {"text": "scheduled after its due date"}
    return resource
