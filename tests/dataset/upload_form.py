"""Sending bytes with a CreateImageUpload form, as a browser does: a multipart POST to the store."""

from __future__ import annotations

import re

import httpx

from kiln.v1 import dataset_pb2 as pb


def post_form(upload: pb.ImageUpload, data: bytes, **fields: str) -> httpx.Response:
    """POST `data` with the upload's form fields (any in `fields` replacing or adding to them)."""
    form = {**upload.upload_fields, **fields}
    return httpx.post(upload.upload_url, data=form, files={"file": ("photo.png", data, "image/png")}, timeout=30)


def sent(upload: pb.ImageUpload, data: bytes) -> None:
    """POST `data` and check that the store took it."""
    response = post_form(upload, data)
    assert response.status_code == 204, response.text


def s3_error(response: httpx.Response) -> tuple[int, str]:
    """The HTTP status and the S3 error code of a refused POST."""
    code = re.search(r"<Code>([^<]*)</Code>", response.text)
    return response.status_code, code.group(1) if code else response.text
