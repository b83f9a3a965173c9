"""Composition root: builds the sidecar from a `Config` and runs it.

The only place that chooses implementations (upstream pool, servicers, health,
reflection) and binds addresses.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from dataclasses import dataclass, field

import grpc
import structlog
from grpc_health.v1 import _async as health_aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from sidecar._proto.inference import grpc_predict_v2_pb2 as oip
from sidecar._proto.inference import grpc_predict_v2_pb2_grpc as oip_grpc
from sidecar._proto.sidecar.v1 import control_pb2, control_pb2_grpc, predict_pb2_grpc
from sidecar.adapters.grpc.converters import decode_outputs
from sidecar.adapters.grpc.servicers import (
    ControlServicer,
    InferenceServicer,
    PredictServicer,
    service_names,
)
from sidecar.adapters.upstream.oip import UpstreamPool
from sidecar.app.dataplane import DataPlane
from sidecar.app.mirror import ShadowMirror
from sidecar.app.state import StateHolder
from sidecar.config import Config

log = structlog.get_logger("sidecar")
READINESS_INTERVAL = 2.0


@dataclass
class Sidecar:
    """A built, not yet started, sidecar."""

    config: Config
    pool: UpstreamPool
    dataplane: DataPlane[oip.ModelInferRequest, oip.ModelInferResponse]
    predict_server: grpc.aio.Server
    control_server: grpc.aio.Server
    health: health_aio.HealthServicer
    predict_port: int = 0
    control_port: int = 0
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    async def start(self) -> None:
        await self.predict_server.start()
        await self.control_server.start()
        await self.health.set("", health_pb2.HealthCheckResponse.SERVING)
        self._tasks.append(asyncio.create_task(self._watch_readiness()))
        log.info(
            "sidecar.started",
            predict=f"{_host(self.config.predict_address)}:{self.predict_port}",
            control=f"{_host(self.config.control_address)}:{self.control_port}",
            model=self.config.model,
            variants={n: v.address for n, v in self.config.variants.items()},
            weights=dict(self.dataplane.state.current.flag.weights),
            shadow=self.config.shadow.variant if self.config.shadow else None,
        )

    async def _watch_readiness(self) -> None:
        """Keep grpc.health.v1 for the routed services in step with the stable variant."""
        last: bool | None = None
        while True:
            ready = await self.dataplane.stable_ready(self.config.upstream.connect_timeout or 1.0)
            if ready != last:
                status = (
                    health_pb2.HealthCheckResponse.SERVING
                    if ready
                    else health_pb2.HealthCheckResponse.NOT_SERVING
                )
                for name in service_names():
                    await self.health.set(name, status)
                log.info(
                    "stable.readiness",
                    ready=ready,
                    variant=self.dataplane.state.current.flag.stable,
                )
                last = ready
            await asyncio.sleep(READINESS_INTERVAL)

    async def stop(self, grace: float | None = None) -> None:
        """Graceful stop: NOT_SERVING, refuse new calls, drain in-flight within `grace`."""
        grace = self.config.server.shutdown_grace if grace is None else grace
        log.info("sidecar.stopping", grace_seconds=grace)
        await self.health.enter_graceful_shutdown()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await asyncio.gather(self.predict_server.stop(grace), self.control_server.stop(grace))
        if self.dataplane.mirror is not None:
            await self.dataplane.mirror.close(grace=min(grace, 1.0))
        await self.pool.close()
        log.info("sidecar.stopped")


def _host(address: str) -> str:
    return address.rpartition(":")[0]


def build(config: Config) -> Sidecar:
    """Wire every part from `config` and bind the listen addresses (port 0 allowed)."""
    pool = UpstreamPool(config.variants, config.server.max_message_bytes)
    state = StateHolder(config.flag)
    mirror = None
    if config.shadow is not None:
        mirror = ShadowMirror(
            config.shadow,
            pool.upstreams[config.shadow.variant],
            decode_outputs,
            salt=config.flag.salt,
        )
    dataplane: DataPlane[oip.ModelInferRequest, oip.ModelInferResponse] = DataPlane(
        model=config.model,
        state=state,
        variants=config.variants,
        upstreams=pool.upstreams,
        upstream_config=config.upstream,
        mirror=mirror,
    )
    options = [
        ("grpc.max_receive_message_length", config.server.max_message_bytes),
        ("grpc.max_send_message_length", config.server.max_message_bytes),
        ("grpc.so_reuseport", 0),
    ]
    predict_server = grpc.aio.server(options=options)
    health_servicer = health_aio.HealthServicer()
    stable = pool.upstreams[config.flag.stable]
    oip_grpc.add_GRPCInferenceServiceServicer_to_server(
        InferenceServicer(config, dataplane, stable), predict_server
    )
    predict_pb2_grpc.add_PredictServicer_to_server(
        PredictServicer(config, dataplane), predict_server
    )
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, predict_server)
    reflection.enable_server_reflection(
        (*service_names(), health.SERVICE_NAME, reflection.SERVICE_NAME), predict_server
    )
    control_server = grpc.aio.server(options=options)
    control_pb2_grpc.add_ControlServicer_to_server(
        ControlServicer(config, dataplane), control_server
    )
    reflection.enable_server_reflection(
        (control_pb2.DESCRIPTOR.services_by_name["Control"].full_name, reflection.SERVICE_NAME),
        control_server,
    )
    predict_port = predict_server.add_insecure_port(config.predict_address)
    control_port = control_server.add_insecure_port(config.control_address)
    return Sidecar(
        config=config,
        pool=pool,
        dataplane=dataplane,
        predict_server=predict_server,
        control_server=control_server,
        health=health_servicer,
        predict_port=predict_port,
        control_port=control_port,
    )


async def serve(config: Config) -> int:
    """Run until SIGTERM or SIGINT; drain and return 0."""
    sidecar = build(config)
    await sidecar.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await sidecar.stop()
    return 0
