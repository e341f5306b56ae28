"""What the OpenAPI document says about job trees: where a task sits in its tree, the fields
that put a new task under a parent, the batch submit and the tree view (services/api/trees.py).
"""

from __future__ import annotations

from typing import Any

from services.api.serialize import CURSOR_PATTERN
from services.api.trees import CHILDREN_DEFAULT, CHILDREN_MAX, REF_MAX
from shared.settings import Settings

Schema = dict[str, Any]

_UUID = {"type": "string", "format": "uuid"}
_REF = {"type": "string", "maxLength": REF_MAX, "pattern": "^[^\\u0000]*$"}
# The refusals a tree adds; which parents exist and how the refs of a batch hang together
# are beyond what a schema can say, so a schema-valid request may still get one of these.
UNPROCESSABLE = ("unknown_parent", "cycle", "duplicate_ref", "tree_too_deep",
                 "too_many_children")
CONFLICTS = ("parent_finished", "parent_cancelling", "fail_fast")
ROOTS_PARAM = {"name": "roots", "in": "query", "description": "Only tasks without a parent",
               "schema": {"type": "boolean", "default": False}}


def task_fields() -> Schema:
    """The Task schema's `tree`."""
    from services.api.openapi import _nullable, _obj

    integer = {"type": "integer", "minimum": 0}
    return {"tree": _nullable(_obj({
        "parent_id": _nullable(_UUID), "root_id": _UUID,
        "depth": {**integer, "description": "0 for a root"},
        "children": {**integer, "description": "Children made under it so far"},
        "fail_fast": {"type": "boolean",
                      "description": "A failed child cancels its siblings"},
    }, ["parent_id", "root_id", "depth", "children", "fail_fast"]))}


def submit_fields() -> Schema:
    """What a submission (one, or an entry of a batch) adds to put the task in a tree."""
    return {
        "parent_id": {**_UUID, "description": "An existing task: the new one becomes its "
                                              "child (422 `unknown_parent`; 409 when that "
                                              "task ended, is being cancelled, or failed fast)"},
        "fail_fast": {"type": "boolean", "description": "A failed child of this task cancels "
                                                        "its siblings; defaults to the actor's "
                                                        "option"},
    }


def batch_item(submit: Schema) -> Schema:
    """An entry of a batch: `submit` (the generic SubmitRequest, before the catalogue makes it
    one variant per actor) plus the refs that nest new tasks under each other."""
    return {**submit, "properties": {
        **submit["properties"],
        "ref": {**_REF, "description": "Names this entry for `parent_ref`; unique in the batch"},
        "parent_ref": {**_REF, "description": "The `ref` of another entry of this batch: this "
                                              "task becomes that one's child; excludes "
                                              "`parent_id`"},
    }, "not": {"anyOf": [{"required": ["countdown", "eta"]},
                         {"required": ["parent_id", "parent_ref"]}]}}


def schemas(batch_max_tasks: int | None = None) -> dict[str, Schema]:
    """The batch's request and answer (its entries: batch_item) and the tree view's answer."""
    from services.api.openapi import _STATE, _nullable, _obj, _ref

    integer, number, string = {"type": "integer"}, {"type": "number"}, {"type": "string"}
    return {
        "BatchRequest": _obj({
            "tasks": {"type": "array", "items": _ref("BatchItem"), "minItems": 1,
                      "maxItems": batch_max_tasks or Settings.batch_max_tasks,
                      "description": "Made in one transaction, all or none (BATCH_MAX_TASKS)"},
            "parent_id": {**_UUID, "description": "The parent of every entry that names "
                                                  "neither `parent_id` nor `parent_ref`"},
        }, ["tasks"]),
        "BatchResult": _obj({
            "count": integer, "took_ms": number,
            "tasks": {"type": "array", "description": "In the order of the request",
                      "items": _obj({
                          "id": _UUID, "actor": string, "queue": string, "status": _STATE,
                          "ref": _nullable(string), "parent_id": _nullable(_UUID),
                      }, ["id", "actor", "queue", "status", "ref", "parent_id"])},
        }, ["count", "took_ms", "tasks"]),
        "TreeAggregate": _obj({
            "nodes": {**integer, "description": "The task and everything under it"},
            "by_status": {"type": "object", "propertyNames": _STATE,
                          "additionalProperties": integer},
            "active": {**integer, "description": "Nodes not finished yet"},
            "done": integer, "failed": integer,
            "total": {**_nullable(integer), "description": "Chunks, those of nodes that do "
                                                           "not know theirs yet estimated"},
            "unknown_totals": {**integer, "description": "Nodes that do not know their size"},
            "percent": _nullable(number), "eta_seconds": _nullable(number),
            "depth": {**integer, "description": "The deepest node's depth in the tree"},
        }, ["nodes", "by_status", "active", "done", "failed", "total", "unknown_totals",
            "percent", "eta_seconds", "depth"]),
        "TaskTree": _obj({
            "task": _ref("TaskSummary"),
            "ancestors": {"type": "array", "description": "Nearest first, up to the root",
                          "items": _obj({"id": _UUID, "actor": string, "status": _STATE},
                                        ["id", "actor", "status"])},
            "aggregate": _ref("TreeAggregate"),
            "next": _nullable(string),
            "items": {"type": "array", "items": _ref("TaskSummary"),
                      "description": "Children, oldest first"},
        }, ["task", "ancestors", "aggregate", "next", "items"]),
    }


def paths() -> dict[str, Schema]:
    from services.api.openapi import _ID_PARAM, _json, _op, _ref

    return {
        "/api/v1/tasks:batch": {
            "post": _op("Submit tasks", {202: _json(_ref("BatchResult"), "All queued")},
                        errors=(400, 401, 403, 409, 413, 422, 503), body=_ref("BatchRequest"),
                        secured=True),
        },
        "/api/v1/tasks/{id}/tree": {
            "get": _op("Get task tree", {200: _json(_ref("TaskTree"), "The task, its "
                                                    "ancestors, its subtree's totals and a "
                                                    "page of its children")},
                       errors=(400, 404, 503), params=[
                _ID_PARAM,
                {"name": "limit", "in": "query", "schema": {
                    "type": "integer", "minimum": 1, "maximum": CHILDREN_MAX,
                    "default": CHILDREN_DEFAULT}},
                {"name": "cursor", "in": "query", "schema": {
                    "type": "string", "pattern": CURSOR_PATTERN},
                 "description": "`next` of the previous page"},
            ]),
        },
    }
