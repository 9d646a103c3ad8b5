"""Base models and presets: the engine's catalog, with what is installed here."""

from __future__ import annotations

import grpc

from kiln.v1 import trainer_pb2 as pb
from services.common.errors import invalid_field, not_found, parsed, unary_errors
from services.trainer.configs import BASE_MODEL_PREFIX, FAMILY_TO_PROTO, PRESET_PREFIX, config_message
from services.trainer.engine import catalog
from services.trainer.engine.catalog import BaseModelEntry
from services.trainer.engine.config import parse_config
from services.trainer.service_base import TrainerBase


class CatalogRpcs(TrainerBase):
    @unary_errors
    async def ListBaseModels(self, request: pb.ListBaseModelsRequest,
                             context: grpc.aio.ServicerContext) -> pb.ListBaseModelsResponse:
        request = parsed(request)
        entries = await self._cpu(self._models.entries)
        wanted = request.family
        return pb.ListBaseModelsResponse(base_models=[
            self._base_model(e) for e in entries if not wanted or FAMILY_TO_PROTO[e.family] == wanted])

    @unary_errors
    async def GetBaseModel(self, request: pb.GetBaseModelRequest, context: grpc.aio.ServicerContext) -> pb.BaseModel:
        name = parsed(request).name
        if not name.startswith(BASE_MODEL_PREFIX):
            raise invalid_field("name", "a base model's name: baseModels/{id}")
        entry = await self._cpu(self._models.entry, name.removeprefix(BASE_MODEL_PREFIX))
        if entry is None:
            raise not_found(name, "base model")
        return self._base_model(entry)

    def _base_model(self, entry: BaseModelEntry) -> pb.BaseModel:
        return pb.BaseModel(
            name=BASE_MODEL_PREFIX + entry.id, display_name=entry.display_name, family=FAMILY_TO_PROTO[entry.family],
            installed=self._models.is_available(entry.id), builtin=entry.builtin,
            default_resolution=entry.resolution, source_hint=entry.source_hint,
            presets=[PRESET_PREFIX + p.id for p in catalog.PRESETS if entry.id in p.base_models])

    @unary_errors
    async def ListPresets(self, request: pb.ListPresetsRequest,
                          context: grpc.aio.ServicerContext) -> pb.ListPresetsResponse:
        request = parsed(request)
        wanted = request.family
        return pb.ListPresetsResponse(presets=[
            preset_message(p) for p in catalog.PRESETS if not wanted or FAMILY_TO_PROTO[p.family] == wanted])

    @unary_errors
    async def GetPreset(self, request: pb.GetPresetRequest, context: grpc.aio.ServicerContext) -> pb.Preset:
        name = parsed(request).name
        if not name.startswith(PRESET_PREFIX):
            raise invalid_field("name", "a preset's name: presets/{id}")
        chosen = next((p for p in catalog.PRESETS if p.id == name.removeprefix(PRESET_PREFIX)), None)
        if chosen is None:
            raise not_found(name, "preset")
        return preset_message(chosen)


def preset_message(preset: catalog.Preset) -> pb.Preset:
    config = parse_config(catalog.preset_config(preset.id))
    return pb.Preset(name=PRESET_PREFIX + preset.id, display_name=preset.display_name, theme=preset.theme,
                     family=FAMILY_TO_PROTO[preset.family],
                     base_models=[BASE_MODEL_PREFIX + m for m in preset.base_models], config=config_message(config))
