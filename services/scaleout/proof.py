"""The scale-out proof: tenants submit tiny training jobs through the gateway of a production-shaped
cluster and watch them, while a worker, a trainer-service replica, a volume server and the database
fail; then every job must have succeeded exactly once with the LoRA of an uninterrupted run, every
watcher and webhook endpoint must have heard every event once, the queue must have kept its order,
and the bucket must hold nothing no record names."""

from __future__ import annotations

import collections
import concurrent.futures
import pathlib
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from kiln import Client
from kiln.v1 import trainer_pb2 as tpb
from kiln.v1 import webhooks_pb2 as whpb
from services.common.bundled_data import samples_dir
from services.scaleout import checks, faults
from services.scaleout.cluster import Cluster, Shape, create_api_key, running_cluster
from services.scaleout.watchers import Watch, follow
from services.scaleout.webhook_sink import WebhookSink

Report = Callable[[str], None]
PRESET = "presets/demo-tiny-sd15"
TRIGGER = "kilnproof"
SAMPLES = ("astronaut.png", "coffee.png")
WEBHOOK_EVENTS = ("training.queued", "training.started", "training.epoch_saved", "training.succeeded",
                  "training.failed", "training.cancelled")


@dataclass(frozen=True)
class Workload:
    jobs: int = 20
    tenants: int = 4
    epochs: int = 3
    faults: bool = True
    # How long the whole run may take before the proof gives up.
    timeout_seconds: float = 1800.0


@dataclass
class Outcome:
    hosts: str = ""
    baseline_seconds: float = 0.0
    baseline_training_seconds: float = 0.0
    wall_seconds: float = 0.0
    mean_training_seconds: float = 0.0
    faults: list[faults.Fault] = field(default_factory=list)
    failures: dict[str, list[str]] = field(default_factory=dict)
    webhook_repeats: int = 0
    watcher_reconnects: int = 0
    watch_breaks: dict[str, int] = field(default_factory=dict)
    attempts: int = 0
    objects: int = 0

    @property
    def passed(self) -> bool:
        return not any(self.failures.values())

    def summary(self, workload: Workload, shape: Shape) -> list[str]:
        lines = [f"hosts: {self.hosts}",
                 f"one job alone: {self.baseline_seconds:.1f} s from submission to its end "
                 f"({self.baseline_training_seconds:.1f} s on a worker)",
                 f"{workload.jobs} jobs of {workload.tenants} tenants on {shape.workers} workers: "
                 f"{self.wall_seconds:.1f} s from the first submission to the last end",
                 f"per job: {self.mean_training_seconds:.1f} s on a worker, "
                 f"{self.mean_training_seconds / max(self.baseline_training_seconds, 1e-9):.2f}x the job alone; "
                 f"throughput {workload.jobs / max(self.wall_seconds, 1e-9) * 60:.1f} jobs/min "
                 f"({self.wall_seconds / max(workload.jobs * self.baseline_seconds, 1e-9):.2f}x the time of running "
                 "them one after another alone)",
                 f"attempts: {self.attempts} for {workload.jobs} jobs; watcher reconnects: "
                 f"{self.watcher_reconnects}; repeated webhook deliveries (same id): {self.webhook_repeats}; "
                 f"objects in the bucket: {self.objects}"]
        lines += [f"fault: {f.name}: {f.detail}; healed after {f.healed_after:.1f} s ({f.healed_when})"
                  for f in self.faults]
        for check, wrong in self.failures.items():
            lines.append(f"check {check}: " + ("holds" if not wrong else "FAILED\n    " + "\n    ".join(wrong[:10])))
        return lines


def _config() -> tpb.TrainingConfig:
    # 64 px, a batch of one, one two-step preview an epoch: seconds of CPU an epoch.
    return tpb.TrainingConfig(resolution=tpb.Resolution(width=64, height=64), batch_size=1, seed=11,
                              cache_latents=True, preview=tpb.PreviewConfig(count=1, steps=2, width=64, height=64))


def _dataset(client: Client) -> str:
    dataset = client.create_dataset("Scale-out proof", "sd15")
    for sample in SAMPLES:
        client.upload_file(dataset.name, samples_dir() / sample)
    client.wait_for_tagging(dataset.name, progress=False)
    client.add_tag(dataset.name, TRIGGER, head=True)
    return dataset.name


def _submit(client: Client, dataset: str, workload: Workload, request_id: str) -> tpb.TrainingJob:
    return client.create_job(dataset, PRESET, epochs=workload.epochs, repeat=1, preview_prompt=f"{TRIGGER}, a photo",
                             config=_config(), display_name=f"proof {request_id}", request_id=request_id)


def _seconds(job: tpb.TrainingJob) -> float:
    return (job.end_time.ToDatetime() - job.start_time.ToDatetime()).total_seconds()


def _lora(client: Client, job: tpb.TrainingJob, epoch: int, folder: pathlib.Path) -> dict[str, object]:
    import safetensors.torch

    path = client.download_epoch(job.name, epoch, folder / f"{job.name.replace('/', '-')}-{epoch}.safetensors")
    return dict(safetensors.torch.load_file(str(path)))


def _same_lora(clients: Mapping[str, Client], records: Sequence[checks.JobRecord], reference: checks.JobRecord,
               epochs: int) -> list[str]:
    """Every epoch of every job has the tensors of the job that ran alone, uninterrupted."""
    wrong = []
    with tempfile.TemporaryDirectory(prefix="kiln-proof-") as folder:
        directory = pathlib.Path(folder)
        expected = {epoch: _lora(clients[reference.tenant], reference.job, epoch, directory)
                    for epoch in range(1, epochs + 1)}
        for record in records:
            if record is reference:
                continue
            for epoch in range(1, epochs + 1):
                got = _lora(clients[record.tenant], record.job, epoch, directory)
                if got.keys() != expected[epoch].keys() or not all(
                        bool((got[k] == expected[epoch][k]).all()) for k in got):  # type: ignore[attr-defined]
                    wrong.append(f"{record.job.name} epoch {epoch} differs from the uninterrupted run")
    return wrong


def run_proof(root: pathlib.Path, workload: Workload, shape: Shape, report: Report = print) -> Outcome:
    outcome = Outcome()
    with running_cluster(root, shape, report) as cluster:
        outcome.hosts = cluster.network.kind
        _exercise(cluster, workload, shape, outcome, report)
        if cluster.unexpected_exits:
            outcome.failures["no part died unasked"] = list(cluster.unexpected_exits)
    return outcome


def _exercise(cluster: Cluster, workload: Workload, shape: Shape, outcome: Outcome, report: Report) -> None:
    deadline = time.monotonic() + workload.timeout_seconds
    tenants = [f"proof-{chr(ord('a') + i)}" for i in range(workload.tenants)]
    clients = {tenant: Client(cluster.gateway_address, create_api_key(cluster, tenant)) for tenant in tenants}
    sink = WebhookSink(cluster.network.own_address)
    with sink.serving(), concurrent.futures.ThreadPoolExecutor(workload.jobs + 8) as pool:
        report(f"{workload.tenants} tenants: a dataset of {len(SAMPLES)} photos each, tagged; a webhook endpoint each")
        datasets = dict(zip(tenants, pool.map(lambda t: _dataset(clients[t]), tenants), strict=True))
        for tenant, client in clients.items():
            endpoint = client.webhooks.CreateWebhookEndpoint(whpb.CreateWebhookEndpointRequest(
                webhook_endpoint=whpb.WebhookEndpoint(url=sink.url(tenant), event_types=WEBHOOK_EVENTS)))
            sink.expect(tenant, endpoint.secret)

        first = tenants[0]
        report("one job alone, uninterrupted: the reference run")
        started = time.monotonic()
        reference = Watch(_submit(clients[first], datasets[first], workload, "reference").name, first)
        follow(clients[first], reference, deadline)
        outcome.baseline_seconds = time.monotonic() - started
        reference_job = clients[first].get_job(reference.job)
        outcome.baseline_training_seconds = _seconds(reference_job)
        report(f"  {outcome.baseline_seconds:.1f} s")

        report(f"{workload.jobs} jobs, each tenant's in a burst, each job watched through the gateway")
        started = time.monotonic()
        watches: list[Watch] = []
        futures = []
        # Each tenant's jobs in one burst, the tenants one after another: served first come, first
        # served, the first tenant's backlog would hold the others back; round-robin must not.
        try:
            for index in range(workload.jobs):
                tenant = tenants[index * len(tenants) // workload.jobs]
                watch = Watch(_submit(clients[tenant], datasets[tenant], workload, f"job-{index}").name, tenant)
                watches.append(watch)
                futures.append(pool.submit(follow, clients[tenant], watch, deadline))
            if workload.faults:
                outcome.faults = _inject(cluster, watches, clients[first], reference.job, deadline, report)
            for future in futures:
                future.result()
        except BaseException:
            for watch in watches:
                watch.stop()
            raise
        outcome.wall_seconds = time.monotonic() - started
        report(f"  all over after {outcome.wall_seconds:.1f} s")

        records = [checks.JobRecord(clients[w.tenant].get_job(w.job), w.tenant,
                                    list(clients[w.tenant].watch_job(w.job))) for w in [reference, *watches]]
        by_name = {r.job.name: r for r in records}
        outcome.mean_training_seconds = sum(_seconds(r.job) for r in records[1:]) / max(len(records) - 1, 1)
        outcome.attempts = sum(r.job.attempt_count for r in records[1:])
        outcome.watcher_reconnects = sum(w.reconnects for w in watches)
        outcome.watch_breaks = dict(sum((w.breaks for w in watches), collections.Counter()))
        report("checking")
        # Deliveries still due (a retry after a fault) are given until the last one is sent.
        expected = sum(len(checks.expected_webhooks(r)) for r in records)
        faults.until(lambda: len({(d.endpoint, d.webhook_id) for d in sink.received()}) >= expected, deadline,
                      "webhook deliveries still missing at the deadline")
        fail = outcome.failures
        fail["every job succeeded exactly once"] = checks.exactly_once(records, workload.epochs)
        fail["each LoRA equals the uninterrupted run's"] = _same_lora(clients, records, records[0], workload.epochs)
        fail["no watcher missed or repeated an event"] = checks.watchers_saw_every_event_once(
            [reference, *watches], by_name)
        fail["every webhook event delivered once per endpoint (by id)"], outcome.webhook_repeats = \
            checks.webhooks_delivered_once_each(records, sink.received(), sink.rejected)
        fail["FIFO within each tenant"] = checks.fifo_within_tenants(records)
        fail["round-robin across tenants (the queue's order replayed)"] = checks.queue_order_held(
            records, shape.max_running_jobs_per_tenant)
        images = {}
        for tenant, dataset in datasets.items():
            images[dataset.removeprefix("datasets/")] = {
                i.name.rsplit("/", 1)[-1] for i in clients[tenant].list_images(dataset)}
        keys = [o.object_name for o in cluster.store.client().list_objects(bucket_name=cluster.store.bucket,
                                                                           recursive=True) if o.object_name]
        outcome.objects = len(keys)
        fail["nothing in the bucket that no record names"] = checks.bucket_holds_only_named_objects(
            keys, images, records)
    for client in clients.values():
        client.close()


def _inject(cluster: Cluster, watches: Sequence[Watch], client: Client, probe: str, deadline: float,
            report: Report) -> list[faults.Fault]:
    done: list[faults.Fault] = []
    steps = [lambda: faults.kill_worker_mid_run(cluster, watches, "worker-2", deadline - time.monotonic()),
             lambda: faults.kill_trainer_replica(cluster, watches, "trainer-1", deadline - time.monotonic()),
             lambda: faults.restart_volume_server(cluster, watches, "store-volume-1", deadline - time.monotonic()),
             lambda: faults.stop_database(cluster, watches, client, probe, deadline - time.monotonic())]
    for step in steps:
        fault = step()
        report(f"  {fault.name}: {fault.detail}; healed after {fault.healed_after:.1f} s")
        done.append(fault)
    return done

