"""App client for the sidecar's Predict API.

    from clients.predict import PredictClient
    with PredictClient("127.0.0.1:8500") as client:
        p = client.predict({"input-0": features}, targeting_key="user-42")
        p.outputs["predict"], p.variant, p.request_id

Apps that already speak the Open Inference Protocol (tritonclient, KServe clients) can
instead point at the sidecar's address unchanged and pass `x-user-id` / `x-segment`
headers. gRPC errors are raised as `grpc.RpcError` with the sidecar's status and message.

When the sidecar requires app credentials for outcomes (`predict.auth.tokens`), pass the
app's token: `PredictClient(target, token=os.environ["SIDECAR_APP_TOKEN"])`; it is sent
as `authorization: Bearer <token>` with `report_outcome` only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType

import grpc
import numpy as np

from sidecar._proto.sidecar.v1 import predict_pb2 as pb
from sidecar._proto.sidecar.v1 import predict_pb2_grpc as pb_grpc
from sidecar.core.tensors import decode_outputs, fill_input


@dataclass(frozen=True)
class Prediction:
    """A routed answer: the outputs and which variant produced them, and why."""

    outputs: Mapping[str, np.ndarray]
    variant: str
    model_name: str
    model_version: str
    request_id: str
    reason: str
    reason_detail: str
    response: pb.PredictResponse


def build_request(
    inputs: Mapping[str, np.ndarray],
    *,
    targeting_key: str = "",
    segment: str = "",
    attributes: Mapping[str, str] | None = None,
    outputs: Sequence[str] = (),
    model: str = "",
    version: str = "",
) -> pb.PredictRequest:
    """A PredictRequest with typed contents for each numpy input (`version`: served by
    the variant with that model version, outside the experiment)."""
    request = pb.PredictRequest(
        context=pb.RoutingContext(
            targeting_key=targeting_key, segment=segment, attributes=dict(attributes or {})
        )
    )
    request.inference.model_name = model
    request.inference.model_version = version
    for name, array in inputs.items():
        fill_input(request.inference.inputs.add(), name, np.asarray(array))
    for name in outputs:
        request.inference.outputs.add(name=name)
    return request


def to_prediction(response: pb.PredictResponse) -> Prediction:
    return Prediction(
        outputs=decode_outputs(response.inference),
        variant=response.variant,
        model_name=response.model_name,
        model_version=response.model_version,
        request_id=response.request_id,
        reason=pb.Reason.Name(response.reason).removeprefix("REASON_"),
        reason_detail=response.reason_detail,
        response=response,
    )


class PredictClient:
    """Blocking client over one channel; safe to share between threads."""

    def __init__(self, target: str, *, timeout: float = 5.0, token: str | None = None) -> None:
        self.target = target
        self.timeout = timeout
        self._report_metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self._channel = grpc.insecure_channel(target)
        self._stub = pb_grpc.PredictStub(self._channel)

    def predict(
        self,
        inputs: Mapping[str, np.ndarray],
        *,
        targeting_key: str = "",
        segment: str = "",
        attributes: Mapping[str, str] | None = None,
        outputs: Sequence[str] = (),
        timeout: float | None = None,
        version: str = "",
    ) -> Prediction:
        """Route one inference through the sidecar (`version`: the variant serving that
        model version answers; NOT_FOUND when none does)."""
        request = build_request(
            inputs,
            targeting_key=targeting_key,
            segment=segment,
            attributes=attributes,
            outputs=outputs,
            version=version,
        )
        response: pb.PredictResponse = self._stub.Predict(
            request, timeout=timeout if timeout is not None else self.timeout
        )
        return to_prediction(response)

    def report_outcome(
        self,
        request_id: str,
        metric: str,
        value: bool | float,
        *,
        timeout: float | None = None,
        model: str = "",
    ) -> tuple[str, str]:
        """Report what happened after a prediction (a click, a label, a conversion, a
        score). `request_id` is `Prediction.request_id` (or the front door's x-request-id
        trailer). Returns the (variant, segment) the outcome was attributed to.

        A repeated report of the same request and metric is counted once; an unknown or
        expired id raises NOT_FOUND; a metric that is not configured, or a value of the
        wrong type for the metric, raises INVALID_ARGUMENT; a missing or unknown app token
        (when the sidecar requires one) raises UNAUTHENTICATED. `model`: the routed model
        that served the request (each has its own ledger; "" = the sidecar's primary
        model; a model it does not route raises NOT_FOUND)."""
        request = pb.ReportOutcomeRequest(request_id=request_id, metric=metric, model=model)
        if isinstance(value, bool):
            request.bool_value = value
        else:
            request.number_value = float(value)
        response: pb.ReportOutcomeResponse = self._stub.ReportOutcome(
            request,
            timeout=timeout if timeout is not None else self.timeout,
            metadata=self._report_metadata,
        )
        return response.variant, response.segment

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> PredictClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
