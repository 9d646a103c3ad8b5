"""Every service's Prometheus metrics, scraped over HTTP, and OpenTelemetry traces that follow one
request across services, collected by a real OTLP receiver."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent import futures

import grpc
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from kiln.v1 import dataset_pb2 as pb
from kiln.v1 import dataset_pb2_grpc
from services.common.internal_client import internal_channel
from services.common.ports import free_port
from services.common.settings import ServerSettings, TracingSettings
from services.dataset.server import running_dataset_service
from services.tagger.server import running_tagger_service
from services.tagger.settings import TaggerSettings
from tests.common.metrics_helpers import scrape, value
from tests.dataset.conftest import make_settings
from tests.dataset.helpers import failure, image_bytes, new_dataset, upload
from tests.servers import TEST_AUTH


def test_metrics_count_calls_dependency_latency_and_the_tagging_queue(aio, store, s3_settings, tmp_path):
    # A tagger nobody answers on: uploads wait in the tagging queue.
    settings = make_settings(tmp_path, s3_settings, tagger_address=f"127.0.0.1:{free_port()}")
    with aio.context(running_dataset_service(settings, store)) as service, \
            internal_channel(service.address, TEST_AUTH) as channel:
        stub = dataset_pb2_grpc.DatasetServiceStub(channel)
        dataset = new_dataset(stub)
        upload(stub, dataset.name, image_bytes(seed=9501))
        upload(stub, dataset.name, image_bytes(seed=9502))
        failure(stub.GetDataset, pb.GetDatasetRequest(name="datasets/nosuchdataset"))
        with grpc.insecure_channel(service.address) as outsider:
            failure(dataset_pb2_grpc.DatasetServiceStub(outsider).GetDataset,
                    pb.GetDatasetRequest(name=dataset.name))
        aio.run(service.components.record_queue_metrics())
        samples = scrape(service.server.metrics_url)

    rpc = "kiln_rpc_duration_seconds_count"
    assert value(samples, rpc, method="/kiln.v1.DatasetService/CreateDataset", code="OK") == 1
    assert value(samples, rpc, method="/kiln.v1.DatasetService/UploadImage", code="OK") == 2
    assert value(samples, rpc, method="/kiln.v1.DatasetService/GetDataset", code="NOT_FOUND") == 1
    assert value(samples, rpc, method="/kiln.v1.DatasetService/GetDataset", code="UNAUTHENTICATED") == 1
    dependency = "kiln_dependency_call_duration_seconds_count"
    assert value(samples, dependency, dependency="object store", operation="put_bytes", outcome="ok") >= 2
    assert value(samples, dependency, dependency="database", outcome="ok") >= 3
    assert value(samples, "kiln_work_queue_depth", queue="tagging") == 2
    assert value(samples, "kiln_work_queue_oldest_lease_age_seconds", queue="tagging") >= 0


class Collector(trace_service_pb2_grpc.TraceServiceServicer):
    """An OTLP/gRPC receiver that keeps every span it is sent."""

    def __init__(self) -> None:
        self.spans: list[tuple[str, str, bytes, bytes]] = []  # (service, span name, trace id, parent span id)
        self.span_ids: dict[bytes, str] = {}
        self._lock = threading.Lock()

    def Export(self, request: trace_service_pb2.ExportTraceServiceRequest, context: grpc.ServicerContext
               ) -> trace_service_pb2.ExportTraceServiceResponse:
        with self._lock:
            for resource in request.resource_spans:
                service = next(a.value.string_value for a in resource.resource.attributes if a.key == "service.name")
                for scope in resource.scope_spans:
                    for span in scope.spans:
                        self.spans.append((service, span.name, span.trace_id, span.parent_span_id))
                        self.span_ids[span.span_id] = span.name
        return trace_service_pb2.ExportTraceServiceResponse()


@pytest.fixture
def collector() -> Iterator[tuple[Collector, str]]:
    receiver = Collector()
    server = grpc.server(futures.ThreadPoolExecutor(2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(receiver, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield receiver, f"127.0.0.1:{port}"
    server.stop(0)


def test_one_request_is_followed_across_the_dataset_and_tagger_services(aio, store, s3_settings, tmp_path,
                                                                        collector):
    receiver, endpoint = collector
    tracing = TracingSettings(otlp_endpoint=endpoint)
    tagger_settings = TaggerSettings(data_dir=tmp_path / "tagger", s3=s3_settings, tracing=tracing,
                                     server=ServerSettings(port=0, shutdown_grace=1.0), json_logs=False,
                                     internal_auth=TEST_AUTH)
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    with aio.context(running_tagger_service(tagger_settings, store)) as tagger:
        settings = make_settings(tmp_path / "dataset", s3_settings, tagger_address=tagger.address, tracing=tracing)
        with aio.context(running_dataset_service(settings, store)) as service, \
                internal_channel(service.address, TEST_AUTH) as channel:
            stub = dataset_pb2_grpc.DatasetServiceStub(channel)
            # The gateway's own span, as it would arrive in W3C trace context.
            caller = [("traceparent", f"00-{trace_id}-00f067aa0ba902b7-01")]
            dataset = stub.CreateDataset(pb.CreateDatasetRequest(
                dataset=pb.Dataset(display_name="traced", family=pb.MODEL_FAMILY_SD15)), metadata=caller)
            upload(stub, dataset.name, image_bytes(seed=9601))
            aio.run(service.servicer.tagging.until_idle())
            service.components.observability.tracing.flush()
        tagger.components.observability.tracing.flush()

    by_name = {(svc, name): (tid, parent) for svc, name, tid, parent in receiver.spans}
    created = by_name[("kiln-dataset", "/kiln.v1.DatasetService/CreateDataset")]
    assert created[0].hex() == trace_id  # the dataset service continued the caller's trace
    round_trace, _ = by_name[("kiln-dataset", "tagging round")]
    tagged_trace, tagged_parent = by_name[("kiln-tagger", "/kiln.v1.TaggerService/TagImages")]
    assert tagged_trace == round_trace  # the tagger's work belongs to the dataset service's round
    assert receiver.span_ids[tagged_parent] == "/kiln.v1.TaggerService/TagImages"  # via the client span
