"""A trainer worker: `python -m services.trainer.worker`.

It leases one job at a time from the trainer service (never touching the database), runs it in
a child process that was started ahead with the libraries imported (worker/child.py), relays
what the run does as it happens, passes on cancel and live controls, and reports the outcome.
A report the service refuses with LEASE_LOST means another worker owns the job now: the child
is killed at once. While the service can't be reached the worker keeps the events and retries;
the job runs on meanwhile, for as long as the lease allows.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import multiprocessing
import multiprocessing.connection
import secrets
import signal
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import grpc
from google.protobuf import json_format
from google.rpc import code_pb2, status_pb2

from kiln.v1 import dataset_pb2 as dpb
from kiln.v1 import trainer_pb2 as pb
from kiln.v1 import trainer_worker_pb2 as wpb
from kiln.v1 import trainer_worker_pb2_grpc
from services.common.errors import ConfigurationError, status_details
from services.common.internal_client import ROUND_ROBIN, internal_aio_channel, replicas_target, tls_name_option
from services.common.logs import configure_logging
from services.trainer.artifacts import artifact_name
from services.trainer.worker.child import child_main
from services.trainer.worker.settings import WorkerSettings

log = logging.getLogger(__name__)
Outcome = wpb.FinishTrainingJobRequest.Outcome
FAMILIES = {"sd15": dpb.MODEL_FAMILY_SD15, "sdxl": dpb.MODEL_FAMILY_SDXL}
_RETRYABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.INTERNAL,
              grpc.StatusCode.UNKNOWN, grpc.StatusCode.RESOURCE_EXHAUSTED}
CALL_TIMEOUT = 10.0
MAX_EVENTS_PER_REPORT = 1000  # what the service accepts in one report
T = TypeVar("T")


class LeaseLost(Exception):
    """The service gave the job to another worker."""


class WarmChild:
    """A training process, started ahead of its job."""

    def __init__(self, settings: WorkerSettings) -> None:
        context = multiprocessing.get_context("spawn")
        self.conn, child_end = context.Pipe(duplex=True)
        self.process = context.Process(target=child_main, name="kiln-training",
                                       args=(child_end, str(settings.models_dir), settings.s3),
                                       daemon=True)
        self.process.start()
        child_end.close()
        self.capabilities: dict[str, Any] | None = None

    def wait_ready(self, stop: threading.Event) -> dict[str, Any] | None:
        """What the process found (device, memory) once it has imported everything; None when
        `stop` is set first."""
        while self.capabilities is None:
            if stop.is_set():
                return None
            if not self.conn.poll(0.2):
                continue
            message = self.conn.recv()
            if message[0] != "ready":
                raise RuntimeError(f"the training process said {message[0]!r} before it was ready")
            self.capabilities = message[1]
        return self.capabilities

    def send(self, *message: Any) -> None:
        with contextlib.suppress(OSError, BrokenPipeError):
            self.conn.send(message)

    def kill(self) -> None:
        if self.process.is_alive():
            self.process.kill()
        self.process.join(5)
        self.conn.close()


@dataclass
class RunState:
    """What one job's run has produced and not yet reported."""

    job_id: str
    pending: list[wpb.WorkerEvent] = field(default_factory=list)
    next_index: int = 1
    epoch: int = 0
    step: int = 0
    outcome: tuple[str, str] | None = None
    news: asyncio.Event = field(default_factory=asyncio.Event)

    def add(self, **kind: Any) -> None:
        self.pending.append(wpb.WorkerEvent(index=self.next_index, **kind))
        self.next_index += 1
        self.news.set()


class TrainingWorker:
    def __init__(self, settings: WorkerSettings,
                 stub: trainer_worker_pb2_grpc.TrainingWorkerServiceAsyncStub) -> None:
        self._settings = settings
        self._stub = stub
        self._child: WarmChild | None = None
        self._claim_id = secrets.token_hex(16)
        self.jobs_done = 0

    def _capabilities(self, child: WarmChild, stop: threading.Event) -> wpb.WorkerCapabilities | None:
        found = child.wait_ready(stop)
        if found is None:
            return None
        families = self._settings.worker_families or tuple(FAMILIES)
        return wpb.WorkerCapabilities(families=[FAMILIES[f] for f in families], device=found["device"],
                                      memory_bytes=found["memory_bytes"])

    async def run(self, stop: asyncio.Event, max_jobs: int | None = None) -> None:
        """Claim and run jobs until `stop` is set (or `max_jobs` have run)."""
        # The same signal for the threads that wait on the training process.
        stopping = threading.Event()
        stop_watch = asyncio.ensure_future(_mirror(stop, stopping))
        try:
            while not stop.is_set() and (max_jobs is None or self.jobs_done < max_jobs):
                if self._child is None:
                    self._child = await asyncio.to_thread(WarmChild, self._settings)
                child = self._child
                capabilities = await asyncio.to_thread(self._capabilities, child, stopping)
                if capabilities is None:
                    break
                claimed = await self._claim(capabilities, stop)
                if claimed is None:
                    continue
                if isinstance(claimed, wpb.GenerationAssignment):
                    # Generations run in the warm process, which stays warm (with its loaded
                    # models) for the next one; a training there drops them first. One given up
                    # on mid-way may still be rendering: that process goes.
                    if not await self._run_generation(claimed, child):
                        await asyncio.to_thread(child.kill)
                        self._child = None
                    continue
                assignment = claimed
                # This one is the job's now (a job's process is never reused: nothing of one run may
                # leak into the next). The next job's starts importing at once, beside the run: a
                # few CPU-seconds once, against seconds off every next job's start.
                self._child = await asyncio.to_thread(WarmChild, self._settings)
                try:
                    await self._run_job(assignment, child, stop)
                finally:
                    await asyncio.to_thread(child.kill)
                self.jobs_done += 1
                # Between jobs, with the last one's memory freed: the next process loads the base
                # model this worker last trained, which the next job most likely names too.
                base_model = json.loads(assignment.config_json).get("base_model")
                if self._child is not None and base_model:
                    self._child.send("preload", base_model)
        finally:
            stop_watch.cancel()
            if self._child is not None:
                await asyncio.to_thread(self._child.kill)

    async def _claim(self, capabilities: wpb.WorkerCapabilities,
                     stop: asyncio.Event) -> wpb.TrainingAssignment | wpb.GenerationAssignment | None:
        # The same id until something is handed out: a claim whose answer was lost, asked again,
        # gets that assignment back.
        request = wpb.ClaimTrainingJobRequest(worker_id=self._settings.worker_id, capabilities=capabilities,
                                              wait_seconds=self._settings.claim_wait_seconds, claim_id=self._claim_id)
        claim = asyncio.ensure_future(self._stub.ClaimTrainingJob(
            request, timeout=self._settings.claim_wait_seconds + CALL_TIMEOUT))
        stopped = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait({claim, stopped}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopped.cancel()
        if not claim.done():
            claim.cancel()
            return None
        try:
            response = claim.result()
        except grpc.aio.AioRpcError as err:
            log.warning("could not claim a job: %s: %s", err.code().name, err.details())
            await asyncio.sleep(1.0)
            return None
        if response.HasField("generation") or response.HasField("assignment"):
            self._claim_id = secrets.token_hex(16)
        if response.HasField("generation"):
            return response.generation
        return response.assignment if response.HasField("assignment") else None

    async def _run_generation(self, assignment: wpb.GenerationAssignment, child: WarmChild) -> bool:
        """Run one generation in `child`; False when it was given up on before the child finished."""
        spec = json_format.MessageToDict(assignment, preserving_proto_field_name=True,
                                         always_print_fields_with_no_presence=True)
        spec["seed"] = assignment.seed
        spec["cells"] = [json_format.MessageToDict(c, preserving_proto_field_name=True,
                                                   always_print_fields_with_no_presence=True)
                         for c in assignment.cells]
        child.send("generate", spec)
        loop = asyncio.get_running_loop()
        messages: asyncio.Queue[tuple[Any, ...]] = asyncio.Queue()

        def read() -> None:
            while True:
                try:
                    message = child.conn.recv()
                except (EOFError, OSError):
                    loop.call_soon_threadsafe(messages.put_nowait, ("generation_failed", "the process died"))
                    return
                loop.call_soon_threadsafe(messages.put_nowait, message)
                if message[0] in ("generated", "generation_failed"):
                    return

        threading.Thread(target=read, daemon=True, name="generation").start()
        images: list[pb.GeneratedImage] = []
        job = assignment.generation.split("/generations/")[0]
        heartbeat = min(self._settings.heartbeat_seconds, assignment.lease_seconds / 4)
        try:
            while True:
                try:
                    message = await asyncio.wait_for(messages.get(), heartbeat)
                except TimeoutError:
                    # Loading a model can take longer than the lease: an empty report renews it.
                    await self._call_retrying(self._stub.ReportGeneratedImages, wpb.ReportGeneratedImagesRequest(
                        generation=assignment.generation, lease_id=assignment.lease_id), job, assignment.lease_seconds)
                    continue
                if message[0] == "image":
                    fields = message[1]
                    image = pb.GeneratedImage(
                        row=fields["row"], column=fields["column"], index=fields["index"], epoch=fields["epoch"],
                        strength=fields["strength"], prompt=fields["prompt"], seed=fields["seed"],
                        image=pb.Artifact(name=f"{assignment.generation}/images/{fields['number']}",
                                          content_type="image/png"))
                    images.append(image)
                    await self._call_retrying(self._stub.ReportGeneratedImages, wpb.ReportGeneratedImagesRequest(
                        generation=assignment.generation, lease_id=assignment.lease_id, images=[image]), job,
                        assignment.lease_seconds)
                    continue
                finish = wpb.FinishGenerationRequest(generation=assignment.generation, lease_id=assignment.lease_id)
                if message[0] == "generated" and message[1] is not None:
                    finish.sheet.CopyFrom(pb.Artifact(name=f"{assignment.generation}/sheet", content_type="image/png",
                                                      size_bytes=message[1]["size"]))
                elif message[0] == "generation_failed":
                    finish.error.CopyFrom(status_pb2.Status(code=code_pb2.FAILED_PRECONDITION, message=message[1]))
                await self._call_retrying(self._stub.FinishGeneration, finish, job, assignment.lease_seconds)
                return True
        except (LeaseLost, _Unreachable, grpc.aio.AioRpcError):
            log.warning("generation abandoned", extra={"fields": {"generation": assignment.generation}})
            return False

    async def _call_retrying(self, method: Any, request: Any, what: str, within: float) -> Any:
        return await _retrying(lambda: self._call(method, request, what), within)

    async def _run_job(self, assignment: wpb.TrainingAssignment, child: WarmChild, stop: asyncio.Event) -> None:
        job_id = assignment.job.removeprefix("trainingJobs/")
        state = RunState(job_id)
        log.info("running job", extra={"fields": {"job": assignment.job, "attempt": assignment.attempt}})
        child.send("job", {"config_json": assignment.config_json, "snapshot": assignment.snapshot,
                           "output_prefix": assignment.output_prefix})
        loop = asyncio.get_running_loop()
        reader = threading.Thread(target=self._read_child, args=(child, state, loop), daemon=True,
                                  name=f"child-{job_id}")
        reader.start()
        heartbeat = min(self._settings.heartbeat_seconds, assignment.lease_seconds / 4)
        lease_until = time.monotonic() + assignment.lease_seconds
        try:
            while state.outcome is None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(state.news.wait(), heartbeat)
                # Steps that come faster than this are reported together: each report is a
                # database write, and a fast run would spend its cores on them.
                await asyncio.sleep(self._settings.report_interval_seconds)
                state.news.clear()
                if state.outcome is not None:
                    break
                if stop.is_set():
                    # Shutting down: the job goes back to the queue and resumes from its last
                    # checkpoint on the next worker.
                    await asyncio.to_thread(child.kill)
                    state.outcome = ("RETRY", f"worker {self._settings.worker_id} was stopped")
                    break
                try:
                    response = await self._report(assignment, state)
                except _Unreachable:
                    if time.monotonic() > lease_until:
                        raise LeaseLost(assignment.job) from None
                    continue
                lease_until = time.monotonic() + assignment.lease_seconds
                if response.cancel_requested:
                    child.send("cancel")
                for control in response.controls:
                    child.send("control", pb.SendTrainingControlRequest.Control.Name(control))
            await self._finish(assignment, state)
        except LeaseLost:
            log.warning("lease lost; the job is another worker's now", extra={"fields": {"job": assignment.job}})
        except grpc.aio.AioRpcError as err:
            # A refusal this worker can't act on ends this job's run here, not the worker: the
            # lease runs out and the job resumes elsewhere.
            log.error("the trainer service refused a report: %s: %s", err.code().name, err.details(),
                      extra={"fields": {"job": assignment.job}})

    def _read_child(self, child: WarmChild, state: RunState, loop: asyncio.AbstractEventLoop) -> None:
        """Child messages into events, on the loop's thread."""
        while True:
            try:
                message = child.conn.recv()
            except (EOFError, OSError):
                child.process.join(5)
                code = child.process.exitcode
                loop.call_soon_threadsafe(self._child_died, state, code)
                return
            loop.call_soon_threadsafe(self._on_child_message, state, message)
            if message[0] == "done":
                return

    def _child_died(self, state: RunState, code: int | None) -> None:
        if state.outcome is None:
            state.outcome = ("RETRY", f"the training process died (exit code {code})")
            state.news.set()

    def _on_child_message(self, state: RunState, message: tuple[Any, ...]) -> None:
        kind = message[0]
        if kind == "progress":
            fields = message[1]
            state.epoch, state.step = fields["epoch"], fields["step"]
            state.add(progress=_progress(fields))
        elif kind == "epoch":
            state.add(epoch_saved=_epoch_result(state.job_id, message[1], state.epoch, state.step))
        elif kind == "previews":
            fields = message[1]
            state.add(previews_rendered=pb.PreviewsRenderedEvent(
                step=fields["number"], epoch=state.epoch, previews=_previews(state.job_id, fields)))
        elif kind == "log":
            state.add(log=pb.LogEvent(level=message[1], message=message[2]))
        elif kind == "done":
            state.outcome = (message[1], message[2])
            state.news.set()

    async def _report(self, assignment: wpb.TrainingAssignment, state: RunState) -> wpb.ReportTrainingProgressResponse:
        # At most what one report may carry; the rest goes with the next (news stays set).
        batch = list(state.pending[:MAX_EVENTS_PER_REPORT])
        if len(state.pending) > len(batch):
            state.news.set()
        request = wpb.ReportTrainingProgressRequest(job=assignment.job, lease_id=assignment.lease_id, events=batch)
        response = await self._call(self._stub.ReportTrainingProgress, request)
        del state.pending[:len(batch)]
        return response

    async def _finish(self, assignment: wpb.TrainingAssignment, state: RunState) -> None:
        assert state.outcome is not None
        outcome, text = state.outcome
        while len(state.pending) > MAX_EVENTS_PER_REPORT:
            try:
                await _retrying(lambda: self._report(assignment, state), assignment.lease_seconds)
            except _Unreachable:
                raise LeaseLost(assignment.job) from None
        request = wpb.FinishTrainingJobRequest(job=assignment.job, lease_id=assignment.lease_id,
                                               outcome=Outcome.Value(f"OUTCOME_{outcome}"), events=state.pending)
        if text and outcome in ("FAILED", "RETRY"):
            request.error.CopyFrom(status_pb2.Status(
                code=code_pb2.FAILED_PRECONDITION if outcome == "FAILED" else code_pb2.ABORTED, message=text[:2000]))
        try:
            await _retrying(lambda: self._call(self._stub.FinishTrainingJob, request), assignment.lease_seconds)
        except _Unreachable:
            raise LeaseLost(assignment.job) from None  # silent for a whole lease: it is someone else's
        log.info("job finished", extra={"fields": {"job": assignment.job, "outcome": outcome}})

    async def _call(self, method: Any, request: Any, what: str = "") -> Any:
        try:
            return await method(request, timeout=CALL_TIMEOUT)
        except grpc.aio.AioRpcError as err:
            info, _ = status_details(err)
            if info is not None and info.reason == "LEASE_LOST":
                raise LeaseLost(what or request.job) from None
            if err.code() in _RETRYABLE:
                log.warning("the trainer service did not answer: %s", err.code().name)
                raise _Unreachable() from None
            raise


class _Unreachable(Exception):
    pass


async def _retrying(attempt: Callable[[], Awaitable[T]], within: float) -> T:
    """`attempt`, again every half second while the service can't be reached, for `within` seconds
    (then _Unreachable)."""
    deadline = time.monotonic() + within
    while True:
        try:
            return await attempt()
        except _Unreachable:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.5)


async def _mirror(stop: asyncio.Event, stopping: threading.Event) -> None:
    await stop.wait()
    stopping.set()


def _progress(fields: dict[str, Any]) -> pb.TrainingProgress:
    progress = pb.TrainingProgress(
        phase=fields["phase"], step=fields["step"], total_steps=fields["total_steps"], epoch=fields["epoch"],
        total_epochs=fields["total_epochs"], loss=fields["loss"] or 0.0, smoothed_loss=fields["smoothed_loss"] or 0.0,
        learning_rates=fields["learning_rates"], steps_per_second=fields["steps_per_second"] or 0.0,
        eta_seconds=fields["eta_seconds"] or 0.0, message=fields["message"])
    progress.time.FromNanoseconds(int(fields["time"] * 1e9))
    return progress


def _previews(job_id: str, fields: dict[str, Any]) -> list[pb.Preview]:
    previews = sorted(fields["previews"], key=lambda p: p["index"])
    return [pb.Preview(image=pb.Artifact(name=artifact_name(job_id, fields["kind"], fields["number"], p["index"]),
                                         content_type="image/png", size_bytes=p["size"], sha256=p["sha256"]),
                       seed=p["seed"], thumbnail=p["thumbnail"]) for p in previews]


def _epoch_result(job_id: str, fields: dict[str, Any], current_epoch: int, current_step: int) -> pb.EpochResult:
    on_request = fields["kind"] == "steps"
    lora = fields.get("lora", {"size": 0, "sha256": ""})
    result = pb.EpochResult(
        epoch=current_epoch if on_request else fields["number"], step=fields["number"] if on_request else current_step,
        lora=pb.Artifact(name=artifact_name(job_id, fields["kind"], fields["number"]),
                         content_type="application/octet-stream", size_bytes=lora["size"], sha256=lora["sha256"]),
        previews=_previews(job_id, fields), loss=fields["loss"], on_request=on_request)
    result.save_time.GetCurrentTime()
    return result


async def serve(settings: WorkerSettings, stop: asyncio.Event) -> None:
    if not settings.trainer_address:
        raise ConfigurationError("a worker needs its trainer service: set KILN_TRAINER_ADDRESS=host:port")
    channel = internal_aio_channel(replicas_target(settings.trainer_address), settings.internal_auth,
                                   options=ROUND_ROBIN + tls_name_option(settings.trainer_tls_name))
    try:
        worker = TrainingWorker(settings, trainer_worker_pb2_grpc.TrainingWorkerServiceStub(channel))
        await worker.run(stop)
    finally:
        await channel.close()


def main(argv: Sequence[str] | None = None) -> None:
    settings = WorkerSettings()
    configure_logging(settings.log_level, settings.json_logs)

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await serve(settings, stop)

    asyncio.run(run())
