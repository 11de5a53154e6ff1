"""LangGraph: a checkpoint serializer that keeps large channel values in a pydantic-toast store.

`ToastSerializer` wraps the serializer a checkpoint saver would use (LangGraph's
`JsonPlusSerializer` by default) and implements the same `SerializerProtocol`
(`dumps_typed` / `loads_typed`), so any saver takes it: `SqliteSaver(conn, serde=ToastSerializer(...))`.

- A value whose serialized form is at least `threshold` bytes is stored as a content-addressed
  blob (`_blobs.BlobStore`) and replaced by its id. The same value saved again at the next step,
  or as a pending write and then as a channel value, has the same bytes, hence the same id: it is
  stored once, and this process does not even write it again.
- A whole checkpoint (the SQLite savers serialize every channel value inside it) is taken apart:
  each channel value is serialized once by the inner serializer, kept inline when small or
  offloaded when large, and the checkpoint is serialized around those bytes. No value is
  serialized twice.
- What it writes is tagged (`pydantic_toast:<inner type>`, `pydantic_toast+checkpoint:<inner
  type>`); anything else is handed to the inner serializer untouched, so checkpoints written
  before the wrapper was added still load.

The serializer is sync, as LangGraph's protocol is: an async saver calls it on its event loop,
and the blob I/O then runs on pydantic-toast's bridge thread while that loop waits.
"""

from __future__ import annotations

from typing import Any

from ._blobs import DEFAULT_BLOB_STORAGE_NAME, BlobStore
from ._require import require

require("langgraph.checkpoint.serde.jsonplus", package="langgraph-checkpoint", extra="langgraph")

from langgraph.checkpoint.serde.base import SerializerProtocol  # noqa: E402
from langgraph.checkpoint.serde.jsonplus import JsonPlusSerializer  # noqa: E402

from ..exceptions import StorageValidationError  # noqa: E402

__all__ = ["DEFAULT_THRESHOLD", "ToastSerializer"]

DEFAULT_THRESHOLD = 16 * 1024
"""Serialized values of at least this many bytes are offloaded (16 KiB)."""

_VALUE_TAG = "pydantic_toast:"
_CHECKPOINT_TAG = "pydantic_toast+checkpoint:"
# The marker a channel value becomes inside a checkpoint: [kind, inner type, bytes or blob id].
_INLINE = "i"
_STORED = "s"


class ToastSerializer(SerializerProtocol):
    """A LangGraph `SerializerProtocol` that offloads large values to a pydantic-toast storage.

    Args:
        storage: any pydantic-toast storage URL ("sqlite:///blobs.db", "postgresql://…", "redis://…").
        threshold: values whose serialized form has at least this many bytes are offloaded.
        inner: the serializer that turns values into bytes (default: LangGraph's `JsonPlusSerializer`).
        storage_name: the class name blob records carry in the store.
        compression: stored blobs compressed with this codec ("zlib"), as `ExternalConfigDict` does.
    """

    def __init__(
        self,
        storage: str,
        *,
        threshold: int = DEFAULT_THRESHOLD,
        inner: SerializerProtocol | None = None,
        storage_name: str = DEFAULT_BLOB_STORAGE_NAME,
        compression: str | None = None,
    ) -> None:
        if isinstance(threshold, bool) or not isinstance(threshold, int) or threshold < 1:
            raise StorageValidationError(
                f"threshold must be a positive number of bytes, got {threshold!r}",
                expected="int >= 1",
                actual=threshold,
            )
        self.threshold = threshold
        self.inner: SerializerProtocol = inner if inner is not None else JsonPlusSerializer()
        self.blobs = BlobStore(storage, storage_name=storage_name, compression=compression)

    # ------------------------------------------------------------------ writing

    def dumps_typed(self, obj: Any) -> tuple[str, bytes]:
        if _is_checkpoint(obj) and obj["channel_values"]:
            return self._dump_checkpoint(obj)
        type_, data = self.inner.dumps_typed(obj)
        if len(data) < self.threshold:
            return type_, data
        return _VALUE_TAG + type_, str(self.blobs.put(data)).encode("ascii")

    def _dump_checkpoint(self, checkpoint: dict[str, Any]) -> tuple[str, bytes]:
        markers: dict[str, list[Any]] = {}
        for channel, value in checkpoint["channel_values"].items():
            type_, data = self.inner.dumps_typed(value)
            if len(data) < self.threshold:
                markers[channel] = [_INLINE, type_, data]
            else:
                markers[channel] = [_STORED, type_, str(self.blobs.put(data))]
        type_, data = self.inner.dumps_typed({**checkpoint, "channel_values": markers})
        return _CHECKPOINT_TAG + type_, data

    # ------------------------------------------------------------------ reading

    def loads_typed(self, data: tuple[str, bytes]) -> Any:
        type_, payload = data
        if type_.startswith(_VALUE_TAG):
            blob = self.blobs.get(bytes(payload).decode("ascii"))
            return self.inner.loads_typed((type_.removeprefix(_VALUE_TAG), blob))
        if type_.startswith(_CHECKPOINT_TAG):
            checkpoint = self.inner.loads_typed((type_.removeprefix(_CHECKPOINT_TAG), payload))
            checkpoint["channel_values"] = {
                channel: self._load_marker(marker) for channel, marker in checkpoint["channel_values"].items()
            }
            return checkpoint
        return self.inner.loads_typed(data)

    def _load_marker(self, marker: Any) -> Any:
        kind, type_, body = marker
        if kind == _INLINE:
            return self.inner.loads_typed((type_, body))
        if kind == _STORED:
            return self.inner.loads_typed((type_, self.blobs.get(body)))
        raise StorageValidationError(
            "a checkpoint channel value carries an unknown pydantic-toast marker; it was written by "
            "a newer pydantic-toast — upgrade this process",
            expected=[_INLINE, _STORED],
            actual=kind,
        )


def _is_checkpoint(obj: Any) -> bool:
    # LangGraph's Checkpoint is a TypedDict: recognised by the keys every version has.
    return (
        isinstance(obj, dict)
        and isinstance(obj.get("channel_values"), dict)
        and "channel_versions" in obj
        and "id" in obj
    )
