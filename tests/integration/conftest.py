"""Fixtures for integration tests: real MLServer model servers on 127.0.0.1.

The model repository and the shared MLServer are session-scoped (one per pytest process,
so one per xdist worker); every server gets its own ports and run directory.

This process talks to model servers through tritonclient, whose generated ``inference``
protobuf package cannot share the default descriptor pool with the sidecar's own
``sidecar._proto.inference`` ("duplicate symbol 'inference.ServerLiveRequest'"). Start the
sidecar as a subprocess in integration tests; never import its generated OIP code here.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from sidecar.testing.mlserver import (
    MLServerProcess,
    ModelSpec,
    iris_features,
    iris_labels,
    write_model_repository,
)

OWN_INFERENCE_PB2 = "sidecar._proto.inference.grpc_predict_v2_pb2"

MODEL_SPECS: tuple[ModelSpec, ...] = (
    ModelSpec("classifier", "v1", "logreg"),
    ModelSpec("classifier", "v2", "tree"),
    ModelSpec("classifier-weak", "v1", "stump"),
    ModelSpec("classifier-shadow-same", "v1", "logreg_copy"),
)


def _assert_own_inference_proto_not_imported(when: str) -> None:
    if OWN_INFERENCE_PB2 in sys.modules:
        pytest.fail(
            f"{OWN_INFERENCE_PB2} was imported in the integration-test process ({when}). "
            "It clashes with tritonclient's generated `inference` package in the default "
            "protobuf descriptor pool (duplicate symbol 'inference.ServerLiveRequest'). "
            "Run the sidecar as a subprocess, and run unit tests that import it in a "
            "separate pytest process.",
            pytrace=False,
        )


@pytest.fixture(scope="session", autouse=True)
def _no_own_inference_proto() -> Iterator[None]:
    """Fail loudly if the sidecar's generated OIP module enters this process."""
    _assert_own_inference_proto_not_imported("before the integration tests")
    yield
    _assert_own_inference_proto_not_imported("during the integration tests")


@pytest.fixture(scope="session")
def model_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An MLServer model repository: classifier v1 (logreg), v2 (tree), shadow-same v1."""
    return write_model_repository(tmp_path_factory.mktemp("model-repo"), MODEL_SPECS)


@pytest.fixture(scope="session")
def iris_x(model_repo: Path) -> npt.NDArray[np.float64]:
    """The 150x4 float64 iris features the models were trained on."""
    return iris_features(model_repo)


@pytest.fixture(scope="session")
def iris_y(model_repo: Path) -> npt.NDArray[np.int64]:
    """The 150 int64 iris labels."""
    return iris_labels(model_repo)


@pytest.fixture(scope="session")
def mlserver(
    model_repo: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[MLServerProcess]:
    """A started MLServer serving ``model_repo``, shared by the session; do not kill it."""
    with MLServerProcess(model_repo, run_dir=tmp_path_factory.mktemp("mlserver")) as server:
        yield server


@pytest.fixture
def fresh_mlserver(model_repo: Path, tmp_path: Path) -> Iterator[MLServerProcess]:
    """A dedicated MLServer for one test (safe to kill()); stopped afterwards."""
    with MLServerProcess(model_repo, run_dir=tmp_path / "mlserver") as server:
        yield server
