"""Temporal: payloads above a size threshold are kept in a pydantic-toast store.

Built on the SDK's own external-storage interface (`temporalio.converter.ExternalStorage` and
its `StorageDriver`, temporalio >= 1.24), not on a payload codec: the SDK then does the
threshold check, puts a small reference payload in the workflow history, and counts the
offloaded bytes in its metrics.

    from pydantic_toast.integrations.temporal import toast_data_converter

    client = await Client.connect("localhost:7233", data_converter=toast_data_converter("postgresql://…"))

Where the I/O happens: the SDK stores and retrieves payloads while it encodes a workflow
activation's completion and decodes the next activation, on the worker's event loop, before and
after the workflow code runs in its sandbox thread (`temporalio.worker._workflow`:
`decode_activation` → `workflow.activate` in the executor → `encode_completion`). The workflow
code itself never touches the store, so replay stays deterministic; activities and clients
store and retrieve on their own loops.

Each payload is stored as a content-addressed blob (`_blobs.BlobStore`): the same payload
encoded again — a retried activity's result, a workflow task replayed after a worker restart,
the same big argument passed to many activities — lands on the same record, and a process that
already stored it does not write it again.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from ._blobs import DEFAULT_BLOB_STORAGE_NAME, BlobStore
from ._require import require

require("temporalio.converter", package="temporalio", extra="temporal")

from temporalio.api.common.v1 import Payload  # noqa: E402
from temporalio.converter import (  # noqa: E402
    DataConverter,
    ExternalStorage,
    StorageDriver,
    StorageDriverClaim,
    StorageDriverRetrieveContext,
    StorageDriverStoreContext,
)

from ..exceptions import StorageValidationError  # noqa: E402

__all__ = ["DEFAULT_THRESHOLD", "ToastStorageDriver", "toast_data_converter", "toast_external_storage"]

DEFAULT_THRESHOLD = 256 * 1024
"""Payloads of at least this many bytes are offloaded: the SDK's own default (256 KiB), well
under Temporal's 2 MB payload limit."""

_CLAIM_KEY = "id"


class ToastStorageDriver(StorageDriver):
    """A Temporal `StorageDriver` that keeps payloads in any pydantic-toast storage.

    Args:
        storage: a pydantic-toast storage URL ("postgresql://…", "redis://…", "sqlite:///…").
        name: the driver's name, written into every reference payload in the history: keep it
            stable for as long as histories that used it may be replayed.
        storage_name: the class name blob records carry in the store.
        compression: stored payloads compressed with this codec ("zlib").
    """

    def __init__(
        self,
        storage: str,
        *,
        name: str = "pydantic-toast",
        storage_name: str = DEFAULT_BLOB_STORAGE_NAME,
        compression: str | None = None,
    ) -> None:
        self._name = name
        self.blobs = BlobStore(storage, storage_name=storage_name, compression=compression)

    def name(self) -> str:
        return self._name

    def type(self) -> str:
        return "pydantic-toast"

    async def store(
        self, context: StorageDriverStoreContext, payloads: Sequence[Payload]
    ) -> list[StorageDriverClaim]:
        # Deterministic: a protobuf map (the payload's metadata) otherwise serializes in any
        # order, and the same payload must give the same bytes to get the same content id.
        blobs = [payload.SerializeToString(deterministic=True) for payload in payloads]
        ids = await self.blobs.aput_many(blobs)
        return [StorageDriverClaim(claim_data={_CLAIM_KEY: str(record_id)}) for record_id in ids]

    async def retrieve(
        self, context: StorageDriverRetrieveContext, claims: Sequence[StorageDriverClaim]
    ) -> list[Payload]:
        ids: list[str] = []
        for claim in claims:
            record_id = claim.claim_data.get(_CLAIM_KEY)
            if record_id is None:
                raise StorageValidationError(
                    f"a Temporal storage claim for driver {self._name!r} lacks its {_CLAIM_KEY!r}; the "
                    "history was written by another driver registered under the same name",
                    expected=_CLAIM_KEY,
                    actual=sorted(claim.claim_data),
                )
            ids.append(record_id)
        return [Payload.FromString(blob) for blob in await self.blobs.aget_many(ids)]


def toast_external_storage(storage: str, *, threshold: int = DEFAULT_THRESHOLD) -> ExternalStorage:
    """An `ExternalStorage` that offloads payloads of at least `threshold` bytes to `storage`."""
    if isinstance(threshold, bool) or not isinstance(threshold, int) or threshold < 0:
        raise StorageValidationError(
            f"threshold must be a number of bytes >= 0, got {threshold!r}",
            expected="int >= 0",
            actual=threshold,
        )
    return ExternalStorage(
        drivers=[ToastStorageDriver(storage)],
        payload_size_threshold=threshold,
    )


def toast_data_converter(
    storage: str, *, threshold: int = DEFAULT_THRESHOLD, base: DataConverter | None = None
) -> DataConverter:
    """`base` (default: the SDK's pydantic-aware default converter) with payload offloading.

    Pass the same converter to the client and to every worker: a process without it cannot read
    the references in a history.
    """
    converter = base if base is not None else _pydantic_default()
    return dataclasses.replace(
        converter, external_storage=toast_external_storage(storage, threshold=threshold)
    )


def _pydantic_default() -> DataConverter:
    try:
        from temporalio.contrib.pydantic import pydantic_data_converter
    except ImportError:  # pragma: no cover - every temporalio with ExternalStorage ships it
        return DataConverter.default
    return pydantic_data_converter
