"""Train the two model versions deploy/compose serves (run once by the `models` service,
inside the MLServer image, which has scikit-learn): classifier v1 (logistic regression)
and v2 (decision tree) on scikit-learn's bundled iris data, each in its own folder with
its model-settings.json."""

import json
import sys
from pathlib import Path

import joblib
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression
from sklearn.tree import DecisionTreeClassifier

out = Path(sys.argv[1] if len(sys.argv) > 1 else "/mnt/models")
x, y = load_iris(return_X_y=True)
for version, model in (
    ("v1", LogisticRegression(max_iter=500)),
    ("v2", DecisionTreeClassifier(max_depth=3, random_state=0)),
):
    folder = out / f"classifier-{version}"
    folder.mkdir(parents=True, exist_ok=True)
    joblib.dump(model.fit(x, y), folder / "model.joblib")
    settings = {
        "name": "classifier",
        "implementation": "mlserver_sklearn.SKLearnModel",
        "parameters": {"uri": "./model.joblib", "version": version},
    }
    (folder / "model-settings.json").write_text(json.dumps(settings, indent=2))
    print(f"classifier {version} written to {folder}")
