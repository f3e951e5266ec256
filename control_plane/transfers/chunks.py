"""What a transfer's chunks may be: ``Chunk`` (``common.ResultChunk`` without protobuf) and
the checks the broker applies to what a producer pushes (decision 0020). A check's message
names sizes, offsets and digests, never a presigned URL: messages reach logs and the consumer.
"""

from __future__ import annotations

import urllib.parse
from dataclasses import dataclass, field

from control_plane.transfers.relay import MAX_CHUNK_BYTES, MAX_URL_LENGTH, MAX_URL_TTL_S, PipeSpec
from meridian.core.errors import ValidationError
from meridian.core.resultref import ResultRef


@dataclass(frozen=True)
class Chunk:
    """A piece of a result on its way (``common.ResultChunk`` without protobuf)."""

    offset: int
    data: bytes = b""
    transfer_id: str = ""
    total_size: int = 0
    sha256: str = ""
    error: str = ""
    # In place of ``data``: a URL of the object (a bearer credential, never in a repr).
    presigned_url: str = field(default="", repr=False)
    presigned_url_ttl_s: int = 0


def check_offset(offset: int, ref: ResultRef) -> None:
    if not 0 <= offset <= ref.size:
        raise ValidationError(f"offset {offset} is outside the result's {ref.size} bytes")


def check_url_chunk(chunk: Chunk, spec: PipeSpec) -> None:
    """A chunk carrying a presigned URL: asked for, describing the transfer, alone. The
    messages never quote the URL."""
    if not spec.presigned_url_allowed:
        raise ValidationError("the producer sent a presigned URL the consumer did not accept")
    if (chunk.total_size, chunk.sha256, chunk.offset) != (spec.size, spec.sha256, spec.offset):
        raise ValidationError(
            f"the presigned URL's chunk describes {chunk.total_size} bytes with sha256 "
            f"{chunk.sha256[:64]!r} from offset {chunk.offset}; the transfer is of {spec.size} "
            f"bytes with sha256 {spec.sha256} from offset {spec.offset}"
        )
    if chunk.data or chunk.error or spec.offset >= spec.size:
        raise ValidationError("a presigned URL comes alone, for bytes still to transfer")
    if len(chunk.presigned_url) > MAX_URL_LENGTH:
        raise ValidationError(f"the presigned URL is longer than {MAX_URL_LENGTH} characters")
    try:
        parts = urllib.parse.urlsplit(chunk.presigned_url)
    except ValueError:
        parts = None
    if parts is None or parts.scheme not in ("https", "http") or not parts.hostname:
        raise ValidationError("the presigned URL is not an http(s) URL with a host")
    if not 1 <= chunk.presigned_url_ttl_s <= MAX_URL_TTL_S:
        raise ValidationError(
            f"a presigned URL valid for {chunk.presigned_url_ttl_s} s (1 to {MAX_URL_TTL_S})"
        )


def check_chunk(chunk: Chunk, position: int, size: int, *, first: bool) -> None:
    if chunk.presigned_url:
        raise ValidationError("a presigned URL may only be the first and only chunk")
    if chunk.error:
        raise ValidationError(f"the producer failed mid-way: {chunk.error[:1000]}")
    if len(chunk.data) > MAX_CHUNK_BYTES:
        raise ValidationError(
            f"a chunk of {len(chunk.data)} bytes is over the limit of {MAX_CHUNK_BYTES}"
        )
    if chunk.offset != position:
        raise ValidationError(f"a chunk starts at offset {chunk.offset}, expected {position}")
    if position + len(chunk.data) > size:
        raise ValidationError(f"the producer sent more than the object's {size} bytes")
    if not chunk.data and not first:
        # Only the first may be empty (it may just describe the object): empty chunks would
        # keep a stalled transfer alive past its gap timeout.
        raise ValidationError("an empty chunk after the first")
