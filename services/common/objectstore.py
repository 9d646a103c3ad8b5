"""The one object-store port every service uses (any S3: MinIO, SeaweedFS, AWS).

The `minio` client is synchronous; async callers run these methods in a
worker thread (`asyncio.to_thread`). Keys are resource-shaped
(`datasets/{d}/images/{i}/original`), never user-controlled strings.
"""

from __future__ import annotations

import datetime as dt
import io
from collections.abc import Generator, Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import urllib3
from minio import Minio
from minio.datatypes import PostPolicy
from minio.deleteobjects import DeleteObject
from minio.error import S3Error

from services.common import call_context
from services.common.settings import ObjectStoreSettings

_MISSING_CODES = {"NoSuchKey", "NoSuchObject", "NoSuchBucket"}


class ObjectNotFound(KeyError):
    pass


@dataclass(frozen=True)
class UploadForm:
    """A signed browser upload: POST multipart/form-data to `url` with `fields`, then the file as `file`."""

    url: str
    fields: dict[str, str]


class _DeadlinePool(urllib3.PoolManager):
    """Gives every request what is left of the caller's deadline, at most the configured ceiling:
    minio takes one timeout for all calls, and a hung store would otherwise hold a thread that
    long after its caller gave up."""

    def __init__(self, connect: float, ceiling: float, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._connect = connect
        self._ceiling = ceiling

    def urlopen(self, method: str, url: str, *args: Any, **kw: Any) -> urllib3.BaseHTTPResponse:
        if "timeout" not in kw:
            left = max(0.001, call_context.remaining(self._ceiling))
            # `total` bounds the whole exchange; a read timeout alone would restart with every byte
            # a trickling store sends.
            kw["timeout"] = urllib3.Timeout(total=left, connect=min(self._connect, left))
        return super().urlopen(method, url, *args, **kw)


class ObjectStore:
    def __init__(self, settings: ObjectStoreSettings, endpoint: str | None = None) -> None:
        self.bucket = settings.bucket
        self._settings = settings
        self._endpoint = endpoint or settings.endpoint
        # A pool big enough for the server's worker threads and parallel multipart parts.
        http = _DeadlinePool(
            settings.connect_timeout_seconds, settings.call_timeout_seconds,
            # Connection failures and 5xx answers are retried; a read that timed out is not (the
            # deadline is spent, and a retry would hold the thread as long again).
            maxsize=32, retries=urllib3.Retry(total=2, read=0, backoff_factor=0.2,
                                              status_forcelist=[500, 502, 503, 504]),
        )
        self.client = Minio(
            endpoint=self._endpoint,
            access_key=settings.access_key,
            secret_key=settings.secret_key.get_secret_value(),
            secure=settings.secure,
            region=settings.region,
            http_client=http,
        )

    def check_reachable(self) -> None:
        """Raises unless the store answers for the bucket (the readiness probe)."""
        self.client.bucket_exists(bucket_name=self.bucket)

    def ensure_bucket(self) -> None:
        if not self.client.bucket_exists(bucket_name=self.bucket):
            try:
                self.client.make_bucket(bucket_name=self.bucket)
            except S3Error as err:
                if err.code not in {"BucketAlreadyOwnedByYou", "BucketAlreadyExists"}:
                    raise

    def put_bytes(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        self.client.put_object(
            bucket_name=self.bucket, object_name=key, data=io.BytesIO(data), length=len(data),
            content_type=content_type,
        )

    def get_bytes(self, key: str) -> bytes:
        response = self._get(key)
        try:
            return response.read()
        finally:
            response.close()
            response.release_conn()

    def iter_chunks(self, key: str, chunk_size: int) -> Generator[bytes, None, None]:
        response = self._get(key)
        try:
            yield from response.stream(chunk_size)
        finally:
            response.close()
            response.release_conn()

    def size(self, key: str) -> int:
        try:
            stat = self.client.stat_object(bucket_name=self.bucket, object_name=key)
        except S3Error as err:
            if err.code in _MISSING_CODES:
                raise ObjectNotFound(key) from err
            raise
        return int(stat.size or 0)

    def exists(self, key: str) -> bool:
        try:
            self.size(key)
        except ObjectNotFound:
            return False
        return True

    def delete(self, key: str) -> None:
        self.client.remove_object(bucket_name=self.bucket, object_name=key)

    def delete_many(self, keys: Iterable[str]) -> None:
        pending = [DeleteObject(name=k) for k in keys]
        for start in range(0, len(pending), 1000):
            batch = pending[start:start + 1000]
            errors = list(self.client.remove_objects(bucket_name=self.bucket, delete_object_list=batch))
            failed = [e for e in errors if e.code not in _MISSING_CODES]
            if failed:
                raise RuntimeError(f"could not delete {len(failed)} objects, first: {failed[0]}")

    def list_keys(self, prefix: str) -> list[str]:
        return [
            o.object_name for o in self.client.list_objects(bucket_name=self.bucket, prefix=prefix, recursive=True)
            if o.object_name
        ]

    def list_with_times(self, prefix: str) -> list[tuple[str, dt.datetime]]:
        """Keys under prefix with their last-modified times (UTC)."""
        return [
            (o.object_name, o.last_modified or dt.datetime.now(dt.UTC))
            for o in self.client.list_objects(bucket_name=self.bucket, prefix=prefix, recursive=True)
            if o.object_name
        ]

    def delete_prefix(self, prefix: str) -> None:
        self.delete_many(self.list_keys(prefix))

    def presigned_get(self, key: str, ttl: dt.timedelta) -> str:
        return self._public(self.client.presigned_get_object(bucket_name=self.bucket, object_name=key, expires=ttl))

    def presigned_post(self, key: str, size_bytes: int, expire: dt.datetime) -> UploadForm:
        """A form that lets its holder write exactly `size_bytes` bytes to `key`, until `expire`.

        A presigned PUT URL can't bound the body: whoever holds one can store any size. A POST
        policy is checked by the store itself, which refuses another key, another size and a
        late POST, so a leaked form can fill nothing beyond the one object it was made for."""
        policy = PostPolicy(self.bucket, expire)
        policy.add_equals_condition("key", key)
        policy.add_content_length_range_condition(size_bytes, size_bytes)
        fields = self.client.presigned_post_policy(policy)
        return UploadForm(url=self._public(self._bucket_url()), fields={"key": key, **fields})

    def _bucket_url(self) -> str:
        # Path style, which every S3 serves; the form's signature covers the policy, not the URL.
        scheme = "https" if self._settings.secure else "http"
        return f"{scheme}://{self._endpoint}/{self.bucket}"

    def _public(self, url: str) -> str:
        # Presigned URLs sign the host, so a public name must be the one the
        # store was configured to answer on; we only swap the scheme+host
        # when the operator says clients see the store elsewhere (a proxy
        # that forwards the Host header).
        if not self._settings.public_endpoint:
            return url
        public = urlsplit(self._settings.public_endpoint)
        parts = urlsplit(url)
        return urlunsplit((public.scheme or parts.scheme, public.netloc, parts.path, parts.query, ""))

    def _get(self, key: str) -> urllib3.BaseHTTPResponse:
        try:
            return self.client.get_object(bucket_name=self.bucket, object_name=key)
        except S3Error as err:
            if err.code in _MISSING_CODES:
                raise ObjectNotFound(key) from err
            raise
