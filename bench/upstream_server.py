"""Minimal Open Inference Protocol model server for the data-plane benchmark.

It measures the hop, not a model: ModelInfer parses the request with the generated protobuf
code (as MLServer does), waits ``--delay-ms`` without using the CPU, and answers a fixed
small response (output ``predict``, INT64, shape [1], typed contents) echoing the request's
model name and version. In ``--mode hang`` ModelInfer never answers: it waits until the
caller's deadline cancels it. ServerLive, ServerReady and ModelReady answer true.

Usage::

    python bench/upstream_server.py --port 0 --delay-ms 1 --mode answer

The first line on stdout is ``PORT <n>``, the bound port on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import grpc
import uvloop

from sidecar._proto.inference import grpc_predict_v2_pb2 as pb
from sidecar._proto.inference import grpc_predict_v2_pb2_grpc as pb_grpc


class BenchModelServer(pb_grpc.GRPCInferenceServiceServicer):  # type: ignore[misc]
    """Answers every model name and version; the benchmark is about the hop."""

    def __init__(self, delay_s: float, hang: bool) -> None:
        self._delay_s = delay_s
        self._hang = hang
        self.calls = 0

    async def ServerLive(self, request: Any, context: Any) -> Any:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request: Any, context: Any) -> Any:
        return pb.ServerReadyResponse(ready=True)

    async def ModelReady(self, request: Any, context: Any) -> Any:
        return pb.ModelReadyResponse(ready=True)

    async def ServerMetadata(self, request: Any, context: Any) -> Any:
        # The bench reads the call count from here to check that mirroring really happened.
        return pb.ServerMetadataResponse(
            name="bench-upstream", version="0", extensions=[f"calls={self.calls}"]
        )

    async def ModelMetadata(self, request: Any, context: Any) -> Any:
        tensor = pb.ModelMetadataResponse.TensorMetadata
        return pb.ModelMetadataResponse(
            name=request.name,
            versions=[request.version] if request.version else [],
            platform="bench",
            inputs=[tensor(name="input-0", datatype="FP64", shape=[-1, 4])],
            outputs=[tensor(name="predict", datatype="INT64", shape=[-1])],
        )

    async def ModelInfer(self, request: Any, context: Any) -> Any:
        self.calls += 1
        if self._hang:
            await asyncio.Event().wait()  # until the caller's deadline cancels the call
        if self._delay_s > 0:
            await asyncio.sleep(self._delay_s)
        batch = request.inputs[0].shape[0] if request.inputs and request.inputs[0].shape else 1
        return pb.ModelInferResponse(
            model_name=request.model_name,
            model_version=request.model_version,
            id=request.id,
            outputs=[
                pb.ModelInferResponse.InferOutputTensor(
                    name="predict",
                    datatype="INT64",
                    shape=[batch],
                    contents=pb.InferTensorContents(int64_contents=[1] * batch),
                )
            ],
        )


async def serve(port: int, delay_ms: float, mode: str) -> None:
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(
        BenchModelServer(delay_ms / 1000.0, hang=mode == "hang"), server
    )
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    print(f"PORT {bound}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(grace=0.2)


def spawn(delay_ms: float = 0.0, mode: str = "answer") -> tuple[subprocess.Popen[str], str]:
    """Start this server in its own process (own session); the process and its address."""
    proc = subprocess.Popen(
        [sys.executable, str(Path(__file__).resolve()), "--port", "0",
         "--delay-ms", str(delay_ms), "--mode", mode],
        stdout=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip
    assert proc.stdout is not None
    first = proc.stdout.readline().split()
    if len(first) != 2 or first[0] != "PORT":
        proc.kill()
        raise RuntimeError(f"upstream did not start: {first}")
    return proc, f"127.0.0.1:{first[1]}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--delay-ms", type=float, default=0.0)
    parser.add_argument("--mode", choices=["answer", "hang"], default="answer")
    args = parser.parse_args(argv)
    uvloop.run(serve(args.port, args.delay_ms, args.mode))
    return 0


if __name__ == "__main__":
    sys.exit(main())
