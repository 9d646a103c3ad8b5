"""Artifact names (what clients hold) and the object keys behind them (what only services know).

    trainingJobs/{job}/epochs/{n}/lora           -> trainingJobs/{job}/epochs/{n}/lora.safetensors
    trainingJobs/{job}/epochs/{n}/previews/{k}   -> trainingJobs/{job}/epochs/{n}/previews/{k}.png
    trainingJobs/{job}/steps/{s}/lora            -> trainingJobs/{job}/steps/{s}/lora.safetensors
    trainingJobs/{job}/steps/{s}/previews/{k}    -> trainingJobs/{job}/steps/{s}/previews/{k}.png
    trainingJobs/{job}/generations/{g}/images/{k} -> trainingJobs/{job}/generations/{g}/images/{k}.png
    trainingJobs/{job}/generations/{g}/sheet     -> trainingJobs/{job}/generations/{g}/sheet.png
    models/{model}/lora                          -> models/{model}/lora.safetensors
    models/{model}/images/{k}                    -> models/{model}/images/{k}.png
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from services.common import object_keys
from services.common.errors import invalid_field

_MODEL_NAME = re.compile(r"^models/([0-9a-f]{1,32})/(lora|images/([0-9]{1,3}))$")
_GENERATION_NAME = re.compile(
    r"^trainingJobs/([0-9a-f]{1,32})/generations/([0-9a-f]{1,32})/(images/([0-9]{1,4})|sheet)$")
_NAME = re.compile(r"^trainingJobs/([0-9a-f]{1,32})/(epochs|steps)/([0-9]{1,12})/(lora|previews/([0-9]{1,3}))$")
LORA_TYPE = "application/octet-stream"
PNG_TYPE = "image/png"


@dataclass(frozen=True)
class ArtifactRef:
    # The artifact belongs to a training job (job_id) or to a published model (model_id).
    job_id: str
    model_id: str
    key: str
    content_type: str


def parse_artifact(name: str, field: str = "name") -> ArtifactRef:
    model = _MODEL_NAME.match(name)
    if model is not None:
        model_id, what, index = model.groups()
        return ArtifactRef("", model_id, model_key(model_id, None if index is None else int(index)),
                           LORA_TYPE if what == "lora" else PNG_TYPE)
    generated = _GENERATION_NAME.match(name)
    if generated is not None:
        job_id, generation_id, what, index = generated.groups()
        prefix = generation_prefix(job_id, generation_id)
        return ArtifactRef(job_id, "", prefix + (f"images/{index}.png" if index is not None else "sheet.png"), PNG_TYPE)
    match = _NAME.match(name)
    if match is None:
        raise invalid_field(field, "an artifact's name: trainingJobs/{job}/epochs/{n}/lora, "
                                   "trainingJobs/{job}/epochs/{n}/previews/{k} (or steps/{s}/...), "
                                   "models/{model}/lora or models/{model}/images/{k}")
    job_id, kind, number, what, index = match.groups()
    return ArtifactRef(job_id, "", object_key(job_id, kind, int(number), None if index is None else int(index)),
                       LORA_TYPE if what == "lora" else PNG_TYPE)


def model_key(model_id: str, image: int | None = None) -> str:
    base = object_keys.model_prefix(model_id)
    return base + ("lora.safetensors" if image is None else f"images/{image}.png")


def model_artifact_name(model_id: str, image: int | None = None) -> str:
    return f"models/{model_id}/" + ("lora" if image is None else f"images/{image}")


def object_key(job_id: str, kind: str, number: int, preview: int | None) -> str:
    base = f"{object_keys.training_job_prefix(job_id)}{kind}/{number}/"
    return base + ("lora.safetensors" if preview is None else f"previews/{preview}.png")


def artifact_name(job_id: str, kind: str, number: int, preview: int | None = None) -> str:
    base = f"trainingJobs/{job_id}/{kind}/{number}/"
    return base + ("lora" if preview is None else f"previews/{preview}")


def generation_prefix(job_id: str, generation_id: str) -> str:
    return f"{object_keys.training_job_prefix(job_id)}generations/{generation_id}/"


def generation_name(job_id: str, generation_id: str) -> str:
    return f"trainingJobs/{job_id}/generations/{generation_id}"
