"""The TrainerService gRPC handlers, grouped in the *_rpc modules; the workers' service beside it."""

from __future__ import annotations

from kiln.v1 import trainer_pb2_grpc
from services.trainer.catalog_rpc import CatalogRpcs
from services.trainer.generation_rpc import GenerationRpcs
from services.trainer.jobs_rpc import JobRpcs
from services.trainer.models_rpc import ModelRpcs
from services.trainer.watch_rpc import WatchRpcs
from services.trainer.worker_rpc import WorkerRpcs


class TrainerServicer(CatalogRpcs, JobRpcs, WatchRpcs, ModelRpcs, GenerationRpcs,
                      trainer_pb2_grpc.TrainerServiceServicer):
    pass


class TrainingWorkerServicer(WorkerRpcs, GenerationRpcs):
    pass
