"""The MLServer harness starts real model servers that the real OIP client can use."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from sidecar.testing.mlserver import (
    MLServerNotInstalledError,
    MLServerProcess,
    MLServerStartupError,
    mlserver_python,
    model_ready,
)

pytestmark = pytest.mark.integration


def predict(
    client: grpcclient.InferenceServerClient,
    name: str,
    version: str,
    rows: npt.NDArray[np.float64],
) -> grpcclient.InferResult:
    """One ModelInfer with the rows as a single FP64 [n, 4] input, asking for `predict`."""
    tensor = grpcclient.InferInput("input-0", list(rows.shape), "FP64")
    tensor.set_data_from_numpy(rows)
    return client.infer(
        name,
        [tensor],
        model_version=version,
        outputs=[grpcclient.InferRequestedOutput("predict")],
        client_timeout=10.0,
    )


def labels(
    client: grpcclient.InferenceServerClient, name: str, version: str, rows: npt.NDArray[np.float64]
) -> npt.NDArray[np.int64]:
    """Predicted labels as a flat int64 array (MLServer answers with shape [n, 1])."""
    out = predict(client, name, version, rows).as_numpy("predict")
    assert out is not None
    return np.asarray(out).reshape(-1)


@pytest.fixture
def client(mlserver: MLServerProcess) -> Iterator[grpcclient.InferenceServerClient]:
    """A sync tritonclient gRPC client for the shared MLServer."""
    c = grpcclient.InferenceServerClient(url=mlserver.grpc_address)
    yield c
    c.close()


def test_server_live_and_both_classifier_versions_ready(
    client: grpcclient.InferenceServerClient,
) -> None:
    """The started server is live and ready, with classifier v1 and v2 both ready."""
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready("classifier", "v1")
    assert client.is_model_ready("classifier", "v2")
    assert client.is_model_ready("classifier-shadow-same", "v1")


def test_both_versions_answer_int64_labels_on_the_same_rows(
    client: grpcclient.InferenceServerClient, iris_x: npt.NDArray[np.float64]
) -> None:
    """v1 and v2 each answer the same rows with one INT64 label in {0,1,2} per row."""
    rows = iris_x[[0, 60, 120]]
    for version in ("v1", "v2"):
        result = predict(client, "classifier", version, rows)
        response = result.get_response()
        assert response.model_name == "classifier"
        assert response.model_version == version
        (output,) = response.outputs
        assert (output.name, output.datatype, list(output.shape)) == ("predict", "INT64", [3, 1])
        assert response.raw_output_contents  # raw request in, raw response out
        out = result.as_numpy("predict")
        assert out is not None and out.dtype == np.int64
        assert out.reshape(-1).tolist() == [0, 1, 2]


def test_v1_and_v2_disagree_on_a_few_rows_and_agree_on_most(
    client: grpcclient.InferenceServerClient,
    iris_x: npt.NDArray[np.float64],
    iris_y: npt.NDArray[np.int64],
) -> None:
    """Over all 150 iris rows, logreg v1 and tree v2 differ on some rows but not most."""
    v1 = labels(client, "classifier", "v1", iris_x)
    v2 = labels(client, "classifier", "v2", iris_x)
    disagreements = int(np.count_nonzero(v1 != v2))
    assert 1 <= disagreements <= 15, disagreements
    assert np.mean(v1 == iris_y) > 0.9
    assert np.mean(v2 == iris_y) > 0.9


def test_shadow_same_answers_identically_to_v1(
    client: grpcclient.InferenceServerClient, iris_x: npt.NDArray[np.float64]
) -> None:
    """classifier-shadow-same v1 gives exactly classifier v1's labels on all 150 rows."""
    v1 = labels(client, "classifier", "v1", iris_x)
    same = labels(client, "classifier-shadow-same", "v1", iris_x)
    np.testing.assert_array_equal(same, v1)


def test_unknown_model_or_version_is_not_found(
    client: grpcclient.InferenceServerClient, iris_x: npt.NDArray[np.float64]
) -> None:
    """ModelInfer on an unknown model or version fails with gRPC NOT_FOUND."""
    for name, version in (("no-such-model", ""), ("classifier", "v9")):
        with pytest.raises(InferenceServerException) as caught:
            predict(client, name, version, iris_x[:1])
        assert caught.value.status() == "StatusCode.NOT_FOUND"
        assert caught.value.message() == f"Model {name} with version {version} not found"


def test_model_ready_probe_needs_no_generated_code(mlserver: MLServerProcess) -> None:
    """The hand-encoded ModelReady probe says ready for served models, not for others."""
    assert model_ready(mlserver.grpc_address, "classifier", "v1")
    assert model_ready(mlserver.grpc_address, "classifier", "v2")
    assert not model_ready(mlserver.grpc_address, "no-such-model", "v1")


def test_kill_makes_the_next_call_unavailable(
    fresh_mlserver: MLServerProcess, iris_x: npt.NDArray[np.float64]
) -> None:
    """After kill(), the next ModelInfer fails with UNAVAILABLE and no process is left."""
    c = grpcclient.InferenceServerClient(url=fresh_mlserver.grpc_address)
    try:
        assert labels(c, "classifier", "v1", iris_x[:1]).tolist() == [0]
        pgid = fresh_mlserver.pid
        assert pgid is not None
        fresh_mlserver.kill()
        assert fresh_mlserver.returncode == -9
        with pytest.raises(ProcessLookupError):
            os.killpg(pgid, 0)
        with pytest.raises(InferenceServerException) as caught:
            predict(c, "classifier", "v1", iris_x[:1])
        assert caught.value.status() == "StatusCode.UNAVAILABLE"
    finally:
        c.close()


def test_stop_terminates_the_whole_process_group(model_repo: Path, tmp_path: Path) -> None:
    """stop() ends MLServer cleanly and leaves nothing of its process group running."""
    server = MLServerProcess(model_repo, run_dir=tmp_path).start()
    pgid = server.pid
    assert pgid is not None and server.is_running()
    assert server.stop() == 0
    assert not server.is_running()
    with pytest.raises(ProcessLookupError):
        os.killpg(pgid, 0)
    assert "Loaded model 'classifier' successfully" in server.log_path.read_text()


def test_startup_failure_raises_with_the_log_tail(tmp_path: Path) -> None:
    """A model that cannot load makes start() raise MLServerStartupError with the log tail."""
    broken = tmp_path / "repo" / "broken"
    broken.mkdir(parents=True)
    settings = {
        "name": "broken",
        "implementation": "mlserver_sklearn.SKLearnModel",
        "parameters": {"uri": "./model.joblib", "version": "v1"},
    }
    (broken / "model-settings.json").write_text(json.dumps(settings))
    server = MLServerProcess(tmp_path / "repo", run_dir=tmp_path / "run", startup_timeout=30)
    with pytest.raises(MLServerStartupError, match="InvalidModelURI"):
        server.start()
    assert not server.is_running()


def test_missing_venv_error_says_how_to_build_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A missing MLServer venv gives an error that names `make venv-mlserver`."""
    monkeypatch.setenv("SIDECAR_MLSERVER_VENV", str(tmp_path / "nowhere"))
    with pytest.raises(MLServerNotInstalledError, match="make venv-mlserver"):
        mlserver_python()
