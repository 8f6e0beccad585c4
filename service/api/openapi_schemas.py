"""The OpenAPI document's component schemas: the answers of the classify, model and v2 routes, with
the default model's labels and class count filled in (`eluserve.service.api.openapi` builds the paths
that refer to them)."""

from __future__ import annotations

from typing import Any

from eluserve.core.contract import ModelMetadata

#: References to the error bodies: the service's contract, and the v2 protocol's.
ERROR = {"$ref": "#/components/schemas/EluserveError"}
V2_ERROR = {"$ref": "#/components/schemas/InferenceError"}


def component_schemas(info: ModelMetadata) -> dict[str, Any]:
    ranked = {
        "type": "object",
        "required": ["label", "index", "probability"],
        "properties": {
            "label": {"type": "string"},
            "index": {"type": "integer", "minimum": 0},
            "probability": {"type": "number", "minimum": 0, "maximum": 1},
        },
    }
    result = {
        "type": "object",
        "required": ["label", "probability", "top_k"],
        "properties": {
            "label": {"type": "string"},
            "probability": {"type": "number", "minimum": 0, "maximum": 1},
            "top_k": {"type": "array", "items": {"$ref": "#/components/schemas/RankedLabel"}, "minItems": 1},
        },
    }
    tensor = {
        "type": "object",
        "required": ["name", "shape", "datatype"],
        "properties": {
            "name": {"type": "string", "enum": ["image", "image_bytes"]},
            "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}},
            "datatype": {"type": "string", "enum": ["UINT8", "BYTES"]},
            "parameters": {"type": "object"},
            "data": {"type": "array"},
        },
    }
    return {
        "EluserveError": {
            "type": "object",
            "required": ["error"],
            "additionalProperties": False,
            "properties": {
                "error": {
                    "type": "object",
                    "required": ["code", "message"],
                    "additionalProperties": False,
                    "properties": {"code": {"type": "string"}, "message": {"type": "string", "minLength": 1}},
                }
            },
        },
        "InferenceError": {
            "type": "object",
            "required": ["error"],
            "properties": {"error": {"type": "string", "minLength": 1}},
        },
        "RankedLabel": ranked,
        "Classification": {
            **result,
            "required": ["model", *result["required"]],
            "properties": {"model": {"type": "string"}, **result["properties"]},
        },
        "BatchClassification": {
            "type": "object",
            "required": ["model", "results"],
            "properties": {
                "model": {"type": "string"},
                "results": {"type": "array", "items": {"oneOf": [result, ERROR]}},
            },
        },
        "ModelDocument": {
            "type": "object",
            "required": ["model", "name", "version", "labels", "num_classes", "input_size", "preprocessing"],
            "properties": {
                "model": {"type": "string"},
                "name": {"type": "string"},
                "version": {"type": "string"},
                "labels": {"type": "array", "items": {"type": "string"}},
                "num_classes": {"type": "integer", "minimum": 1},
                "input_size": {"type": "array", "items": {"type": "integer"}, "minItems": 2, "maxItems": 2},
                "preprocessing": {"type": "object"},
            },
        },
        "ModelDescription": {
            "type": "object",
            "required": ["name", "default", "latest_version", "state", "versions"],
            "properties": {
                "name": {"type": "string"},
                "default": {"type": "boolean"},
                "latest_version": {"type": "string"},
                "state": {"type": "string", "enum": ["READY"]},
                "versions": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["version", "model", "state", "execution_provider"],
                        "properties": {
                            "version": {"type": "string"},
                            "model": {"type": "string"},
                            "state": {"type": "string"},
                            "execution_provider": {"type": "string"},
                        },
                    },
                },
            },
        },
        "InferenceTensor": tensor,
        "InferenceRequest": {
            "type": "object",
            "required": ["inputs"],
            "properties": {
                "id": {"type": "string"},
                "parameters": {"type": "object"},
                "inputs": {"type": "array", "items": tensor, "minItems": 1, "maxItems": 1},
                "outputs": {
                    "type": "array",
                    "maxItems": 1,
                    "items": {
                        "type": "object",
                        "required": ["name"],
                        "properties": {
                            "name": {"type": "string", "enum": ["probabilities"]},
                            "parameters": {
                                "type": "object",
                                "properties": {
                                    "classification": {
                                        "type": "integer",
                                        "minimum": 1,
                                        "maximum": info.num_classes,
                                    },
                                    "binary_data": {"type": "boolean"},
                                },
                            },
                        },
                    },
                },
            },
        },
        "InferenceResponse": {
            "type": "object",
            "required": ["model_name", "model_version", "outputs"],
            "properties": {
                "model_name": {"type": "string"},
                "model_version": {"type": "string"},
                "id": {"type": "string"},
                "outputs": {
                    "type": "array",
                    "items": {"type": "object", "required": ["name", "datatype", "shape"]},
                },
            },
        },
        "ModelConfigV2": {
            "type": "object",
            "description": "Triton's ModelConfig (model_config.proto) as JSON",
            "required": ["name", "platform", "max_batch_size", "input", "output", "dynamic_batching"],
            "properties": {
                "name": {"type": "string"},
                "platform": {"type": "string"},
                "backend": {"type": "string"},
                "max_batch_size": {"type": "integer", "minimum": 1},
                "input": {
                    "type": "array",
                    "items": {"type": "object", "required": ["name", "data_type", "dims"]},
                },
                "output": {
                    "type": "array",
                    "items": {"type": "object", "required": ["name", "data_type", "dims"]},
                },
                "dynamic_batching": {"type": "object"},
                "instance_group": {
                    "type": "array",
                    "items": {"type": "object", "required": ["kind", "count"]},
                },
                "parameters": {"type": "object"},
            },
        },
        "ModelMetadataV2": {
            "type": "object",
            "required": ["name", "versions", "platform", "inputs", "outputs"],
            "properties": {
                "name": {"type": "string"},
                "versions": {"type": "array", "items": {"type": "string"}},
                "platform": {"type": "string"},
                "inputs": {"type": "array", "items": {"type": "object"}},
                "outputs": {"type": "array", "items": {"type": "object"}},
            },
        },
    }
