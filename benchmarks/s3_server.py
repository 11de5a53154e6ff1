"""A throwaway S3 API server for the benchmarks: moto's standalone server on a free port.

`TOAST_BENCH_S3_URL=s3://bucket/prefix?endpoint_url=...` points the s3 rows at another server
(MinIO, AWS) instead; credentials then come from the environment as usual.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass

__all__ = ["S3Server", "start_moto"]

BUCKET = "toast-bench"


@dataclass
class S3Server:
    endpoint: str
    bucket: str
    process: subprocess.Popen[bytes] | None

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self.process = None


def start_moto(timeout: float = 30.0) -> S3Server:
    """Start moto (no signature checks: any key works) with one bucket; the caller stops it."""
    import boto3  # type: ignore[import-untyped]  # moto's dependency, used to make the bucket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    server = S3Server(f"http://127.0.0.1:{port}", BUCKET, process)
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                server.stop()
                raise RuntimeError(f"moto did not start on port {port}") from None
            time.sleep(0.05)
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench")
    boto3.client("s3", endpoint_url=server.endpoint, region_name="us-east-1").create_bucket(Bucket=BUCKET)
    return server
