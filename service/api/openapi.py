"""The OpenAPI document of the service: BentoML's infrastructure routes plus every route of ours.

BentoML builds `/docs.json` from its own APIs and adds mounted apps' routes for FastAPI apps only;
ours is a plain Starlette app (the classify endpoints read their bodies themselves, see
`eluserve.service.api.forms`), so its document listed none of them. The service therefore answers
`/docs.json` itself (its routes come before BentoML's), with BentoML's document as the base and the
paths below added, and `/docs` shows it in Swagger UI from the assets BentoML already serves.

The document is built per request from what the worker serves: `{name}` and `{version}` enumerate
the loaded models and versions, `top_k` and labels follow the default model, and the limits follow
the settings. The document's info is ours (the package's version, no contact: BentoML's names its
own team), and our routes are grouped by tag (`TAGS`) instead of under BentoML's "Service APIs",
which lists the `@bentoml.api` methods the service has none of. Schemathesis fuzzes the live
service from it (tests/reliability/test_openapi_fuzz.py), so every status and body written here is
checked against real answers.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from starlette.responses import HTMLResponse

from eluserve.core.contract import ModelMetadata
from eluserve.service.api.openapi_schemas import ERROR, V2_ERROR, component_schemas
from eluserve.service.api.v2 import server_version
from eluserve.service.config import Settings

JSON = "application/json"
#: A model folder name as the routes accept it (one path segment; other paths are not ours).
NAME = "^[A-Za-z0-9][A-Za-z0-9_.-]*$"
#: The groups of our routes in Swagger UI, each with the path prefixes it holds (first match wins).
TAGS = (
    ("repository", "Triton's model repository extension: index, load, unload", ("/v2/repository",)),
    ("v2", "Open Inference Protocol v2 (KServe v2, Triton's HTTP API)", ("/v2",)),
    ("models", "Every loaded model and version, and classification per model", ("/models",)),
    ("classify", "Classification on the default model", ("/classify", "/model")),
    ("page", "The page for people: pick or drop a photo, see its labels", ("/",)),
)
#: BentoML's tag for its `@bentoml.api` methods; the service has none, so the group is empty.
BENTOML_API_TAG = "Service APIs"
CLIENT_STATUSES = {
    "400": "a malformed form, a missing field, a bad top_k, or an image that is not one",
    "408": "the body did not arrive in time",
    "413": "too many images, bytes or pixels",
    "415": "neither multipart/form-data nor an image body, or an image format the service does not decode",
    "429": "overloaded: retry after the Retry-After seconds",
    "503": "device_unavailable: the shared device host is restarting; retry after the Retry-After seconds",
}

SWAGGER_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>eluserve API</title>
<link rel="stylesheet" href="/static_content/swagger-ui.css"></head>
<body><div id="swagger-ui"></div>
<script src="/static_content/swagger-ui-bundle.js"></script>
<script>window.ui = SwaggerUIBundle({url: "/docs.json", dom_id: "#swagger-ui", deepLinking: true});</script>
</body></html>
"""


def swagger_page() -> HTMLResponse:
    """`/docs`: Swagger UI over `/docs.json`."""
    return HTMLResponse(SWAGGER_PAGE)


def _json(description: str, schema: Mapping[str, Any]) -> dict[str, Any]:
    return {"description": description, "content": {JSON: {"schema": dict(schema)}}}


def _errors(statuses: Mapping[str, str], schema: Mapping[str, Any] = ERROR) -> dict[str, Any]:
    answers = {status: _json(description, schema) for status, description in statuses.items()}
    if "404" in answers and schema != ERROR:
        # A path parameter that is no path segment (an encoded "/") makes a path that no route serves,
        # answered with the service's error body (`eluserve.service.api.errors`), not the route's.
        answers["404"]["content"][JSON]["schema"] = {"oneOf": [dict(schema), ERROR]}
    return answers


#: The body of a request that sends one image as it is (`/classify`): any image type, or no type.
RAW_IMAGE = {"type": "string", "format": "binary"}
RAW_IMAGE_TYPES = ("image/*", "application/octet-stream")


def _form(
    field: str, file: Mapping[str, Any], top_k: Mapping[str, Any], *, raw: bool = False
) -> dict[str, Any]:
    """A multipart body with `field` and `top_k`; with `raw`, the image itself as the body too."""
    schema = {"type": "object", "required": [field], "properties": {field: dict(file), "top_k": dict(top_k)}}
    content: dict[str, Any] = {"multipart/form-data": {"schema": schema}}
    if raw:
        content.update({media_type: {"schema": dict(RAW_IMAGE)} for media_type in RAW_IMAGE_TYPES})
    return {"required": True, "content": content}


def _top_k_query(top_k: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "name": "top_k",
        "in": "query",
        "required": False,
        "description": "instead of the form field (a raw image body has no form)",
        "schema": dict(top_k),
    }


def _classify_operations(settings: Settings, num_classes: int | None, per_model: bool) -> dict[str, Any]:
    """POST operations of /classify and /classify_batch (per model: plus 404 for an unknown one)."""
    top_k: dict[str, Any] = {"type": "integer", "minimum": 1, "description": "labels to return (default 5)"}
    if num_classes is not None:
        top_k["maximum"] = num_classes
    single = {"type": "string", "format": "binary"}
    many = {"type": "array", "items": single, "minItems": 1, "maxItems": settings.max_images}
    errors = _errors({**CLIENT_STATUSES, **({"404": "no such model or version"} if per_model else {})})
    ref = "#/components/schemas/"
    return {
        "classify": {
            "post": {
                "summary": "Classify one image (file field `image`, or the image itself as the body)",
                "parameters": [_top_k_query(top_k)],
                "requestBody": _form("image", single, top_k, raw=True),
                "responses": {"200": _json("the prediction", {"$ref": ref + "Classification"}), **errors},
            }
        },
        "classify_batch": {
            "post": {
                "summary": "Classify up to max_images images (repeated file field `images`; multipart only)",
                "parameters": [_top_k_query(top_k)],
                "requestBody": _form("images", many, top_k),
                "responses": {
                    "200": _json("per-image results", {"$ref": ref + "BatchClassification"}),
                    **errors,
                },
            }
        },
    }


def _parameters(names: Sequence[str], versions: Sequence[str], with_version: bool) -> list[dict[str, Any]]:
    params = [
        {"name": "name", "in": "path", "required": True, "schema": {"type": "string", "enum": list(names)}}
    ]
    if with_version:
        params.append(
            {
                "name": "version",
                "in": "path",
                "required": True,
                "schema": {"type": "string", "enum": list(versions)},
            }
        )
    return params


def paths(
    settings: Settings, default: ModelMetadata, loaded: Mapping[str, Sequence[str]]
) -> dict[str, dict[str, Any]]:
    """Every route of ours; `loaded` is model name → versions served now."""
    names = sorted(loaded)
    versions = sorted({version for served in loaded.values() for version in served})
    ref = "#/components/schemas/"
    default_ops = _classify_operations(settings, default.num_classes, per_model=False)
    model_ops = _classify_operations(settings, None, per_model=True)
    not_found = _errors({"404": "no such model or version"})
    document: dict[str, dict[str, Any]] = {
        "/": {
            "get": {
                "summary": "A page for people: pick or drop a photo, see its top-5 labels (offline)",
                "responses": {
                    "200": {
                        "description": "the page",
                        "content": {"text/html": {"schema": {"type": "string"}}},
                    }
                },
            }
        },
        "/classify": default_ops["classify"],
        "/classify_batch": default_ops["classify_batch"],
        "/model": {
            "get": {
                "summary": "The default model",
                "responses": {"200": _json("metadata", {"$ref": ref + "ModelDocument"})},
            }
        },
        "/models": {
            "get": {
                "summary": "Every loaded model: versions, state, execution provider",
                "responses": {
                    "200": _json(
                        "loaded models",
                        {
                            "type": "object",
                            "required": ["default_model", "model_control", "models"],
                            "properties": {
                                "models": {"type": "array", "items": {"$ref": ref + "ModelDescription"}}
                            },
                        },
                    )
                },
            }
        },
        "/models/{name}": {
            "get": {
                "summary": "One loaded model",
                "parameters": _parameters(names, versions, False),
                "responses": {"200": _json("the model", {"$ref": ref + "ModelDescription"}), **not_found},
            }
        },
        "/models/{name}/versions/{version}": {
            "get": {
                "summary": "One loaded version's metadata (the /model document)",
                "parameters": _parameters(names, versions, True),
                "responses": {"200": _json("metadata", {"$ref": ref + "ModelDocument"}), **not_found},
            }
        },
    }
    for prefix, with_version in (("/models/{name}", False), ("/models/{name}/versions/{version}", True)):
        for endpoint, operations in model_ops.items():
            parameters = _parameters(names, versions, with_version) + operations["post"]["parameters"]
            operation = dict(operations["post"], parameters=parameters)
            document[f"{prefix}/{endpoint}"] = {"post": operation}
    control = _errors(
        {
            "400": "the model's files cannot be loaded (the message names them), it is the default model, "
            "or the body is not a small JSON object of the route's options",
            "403": "model control is off: ELUSERVE_MODEL_CONTROL=explicit turns it on",
            "404": "no such model in the repository",
            "500": "applied in this worker, but another worker failed to",
        }
    )

    def options(properties: Mapping[str, Any]) -> dict[str, Any]:
        """Triton's optional body, as `eluserve.service.api.models.control_options` reads it."""
        schema = {"type": "object", "properties": dict(properties), "additionalProperties": False}
        return {"required": False, "content": {JSON: {"schema": schema}}}

    name_param = [
        {"name": "name", "in": "path", "required": True, "schema": {"type": "string", "pattern": NAME}}
    ]
    document["/v2/repository/index"] = {
        "post": {
            "summary": "Triton repository index: every model on disk, its versions and state",
            "requestBody": options({"ready": {"type": "boolean", "description": "only what is served"}}),
            "responses": {
                "200": _json(
                    "the index", {"type": "array", "items": {"type": "object", "required": ["name", "state"]}}
                ),
                **_errors({"400": "the body is not a small JSON object of the route's options"}),
            },
        }
    }
    for action in ("load", "unload"):
        document[f"/v2/repository/models/{{name}}/{action}"] = {
            "post": {
                "summary": f"Triton repository extension: {action} a model in every worker",
                "parameters": name_param,
                "requestBody": options(
                    {"unload_dependents": {"type": "boolean"}} if action == "unload" else {}
                ),
                "responses": {
                    "200": _json(
                        "applied in every worker", {"type": "object", "required": ["name", "state"]}
                    ),
                    **control,
                },
            }
        }
    document.update(_v2_paths(names, versions))
    return document


def _v2_paths(names: Sequence[str], versions: Sequence[str]) -> dict[str, dict[str, Any]]:
    ref = "#/components/schemas/"
    empty = {"description": "yes"}
    v2_not_found = _errors({"404": "no such model or version"}, V2_ERROR)
    document: dict[str, dict[str, Any]] = {
        "/v2": {
            "get": {
                "summary": "Open Inference Protocol server metadata",
                "responses": {
                    "200": _json("server", {"type": "object", "required": ["name", "version", "extensions"]})
                },
            }
        },
        "/v2/health/live": {"get": {"summary": "Liveness", "responses": {"200": empty}}},
        "/v2/health/ready": {
            "get": {"summary": "Readiness", "responses": {"200": empty, "503": {"description": "not ready"}}}
        },
    }
    infer_errors = _errors(
        {
            "400": "a malformed request or tensor, or an image that is not one",
            "404": "no such model or version",
            "408": "the body did not arrive in time",
            "413": "too many images or bytes",
            "415": "an image format the service does not decode",
            "429": "overloaded: retry later",
        },
        V2_ERROR,
    )
    for prefix, with_version in (
        ("/v2/models/{name}", False),
        ("/v2/models/{name}/versions/{version}", True),
    ):
        params = _parameters(names, versions, with_version)
        document[prefix] = {
            "get": {
                "summary": "Model metadata",
                "parameters": params,
                "responses": {"200": _json("metadata", {"$ref": ref + "ModelMetadataV2"}), **v2_not_found},
            }
        }
        document[f"{prefix}/config"] = {
            "get": {
                "summary": "Model configuration (Triton's model configuration extension)",
                "parameters": params,
                "responses": {"200": _json("configuration", {"$ref": ref + "ModelConfigV2"}), **v2_not_found},
            }
        }
        document[f"{prefix}/ready"] = {
            "get": {
                "summary": "Model readiness",
                "parameters": params,
                "responses": {"200": empty, **v2_not_found},
            }
        }
        document[f"{prefix}/infer"] = {
            "post": {
                "summary": "Inference: JSON tensors, or the binary tensor data extension",
                "parameters": params,
                "requestBody": {
                    "required": True,
                    "content": {JSON: {"schema": {"$ref": ref + "InferenceRequest"}}},
                },
                "responses": {
                    "200": {
                        "description": "the outputs (binary: after Inference-Header-Content-Length bytes)",
                        "content": {
                            JSON: {"schema": {"$ref": ref + "InferenceResponse"}},
                            "application/octet-stream": {},
                        },
                    },
                    **infer_errors,
                },
            }
        }
    return document


def document(
    base: Mapping[str, Any], settings: Settings, default: ModelMetadata, loaded: Mapping[str, Sequence[str]]
) -> dict[str, Any]:
    """BentoML's document `base` with our paths and schemas added."""
    components = dict(base.get("components") or {})
    components["schemas"] = {**(components.get("schemas") or {}), **component_schemas(default)}
    info = {"title": "eluserve", "version": server_version(), "description": (__doc__ or "").split("\n\n")[0]}
    ours = paths(settings, default, loaded)
    for path, operations in ours.items():
        for operation in operations.values():
            operation["tags"] = [_tag(path)]
    tags = [{"name": name, "description": description} for name, description, _ in TAGS]
    tags += [tag for tag in base.get("tags", []) if tag.get("name") != BENTOML_API_TAG]
    return {
        **base,
        "info": info,
        "tags": tags,
        "paths": {**base.get("paths", {}), **ours},
        "components": components,
    }


def _tag(path: str) -> str:
    """The `TAGS` group of one of our paths: the first whose prefixes it starts with ("/", the
    page's, is last, so it takes only the page)."""
    return next(name for name, _, prefixes in TAGS if path.startswith(prefixes))
