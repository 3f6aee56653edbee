"""Registers ONNX models in an MLflow tracking server the way a training job
does, with MLflow's own client: run with the MLflow venv's Python
(.switchyard/venvs/mlflow), never imported by pytest (MLflow's dependencies
conflict with the test venv's).

    python mlflow_registry.py URI register NAME MODEL.onnx     -> prints `registered-version N`
    python mlflow_registry.py URI alias NAME ALIAS VERSION
    python mlflow_registry.py URI stage NAME VERSION STAGE
    python mlflow_registry.py URI tag NAME VERSION KEY VALUE

Several commands may be given in one run, separated by `--` (MLflow's import is slow).
"""
import os
import shutil
import sys
import tempfile

import mlflow
from mlflow import MlflowClient
from mlflow.models import Model


def main(argv):
    uri, *rest = argv
    mlflow.set_tracking_uri(uri)
    client = MlflowClient()
    command = []
    for word in rest + ["--"]:
        if word == "--":
            if command:
                run(client, *command)
            command = []
        else:
            command.append(word)


def run(client, cmd, *args):
    if cmd == "register":
        name, path = args
        mlflow.set_experiment("switchyard-tests")
        # The directory mlflow.onnx.save_model writes (MLmodel naming the file under
        # flavors.onnx.data), made without onnxruntime in this venv.
        with tempfile.TemporaryDirectory() as tmp, mlflow.start_run() as active:
            model_dir = os.path.join(tmp, "model")
            os.makedirs(model_dir)
            shutil.copy(path, os.path.join(model_dir, "model.onnx"))
            m = Model(run_id=active.info.run_id, artifact_path="model")
            m.add_flavor("onnx", onnx_version="1.23.2", data="model.onnx", providers=["CPUExecutionProvider"])
            m.save(os.path.join(model_dir, "MLmodel"))
            mlflow.log_artifacts(model_dir, artifact_path="model")
            source = f"{active.info.artifact_uri}/model"
        try:
            client.create_registered_model(name)
        except mlflow.exceptions.MlflowException as e:
            if "RESOURCE_ALREADY_EXISTS" not in str(e.error_code):
                raise
        mv = client.create_model_version(name, source, run_id=active.info.run_id)
        print(f"registered-version {mv.version}", flush=True)
    elif cmd == "alias":
        name, alias, version = args
        client.set_registered_model_alias(name, alias, version)
    elif cmd == "tag":
        name, version, key, value = args
        client.set_model_version_tag(name, version, key, value)
    elif cmd == "stage":
        name, version, stage = args
        client.transition_model_version_stage(name, version, stage)
    elif cmd == "webhook":
        url, secret, *events = args
        hook = client.create_webhook(name="switchyard", url=url, events=events, secret=secret)
        print(f"webhook {hook.webhook_id}", flush=True)
    else:
        raise SystemExit(f"unknown command {cmd}")


if __name__ == "__main__":
    main(sys.argv[1:])
