"""A pipeline run as an MLflow run, and a trained adapter as a version of the twin's registered model.

`twin pipeline` opens one run in the twin's experiment (``twin-<slug>``): the resolved config as
parameters, the dataset's digest and counts, the base model, the evaluation figures, the gate's
decision, and the artifacts (the adapter, the dataset manifest, evaluation samples). The SFT and
DPO steps are logged by the Trainer's own MLflow integration from rank 0, as child runs of this one
(``sft``, ``dpo``: one loss curve each, each with its trainer's arguments). The adapter then becomes a
version of the registered model ``twin-<slug>`` with the gate's verdict, and the alias ``serving``
moves to it when it passed: what serves is read from that alias (llm_twin.registry.serving).
"""

from __future__ import annotations

import json
import math
import os
import tempfile

from llm_twin import registry, tracking

# MLflow keeps at most 100 params / 1000 metrics per batch call and 6000 characters per param value.
_BATCH = 100
_PARAM_CHARS = 6000


def flatten(value, prefix: str = "") -> dict[str, str]:
    """Nested config -> {"train.sft.learning_rate": "0.0002", ...} (lists as JSON)."""
    if isinstance(value, dict):
        out: dict[str, str] = {}
        for key, inner in value.items():
            out.update(flatten(inner, f"{prefix}{key}."))
        return out
    text = json.dumps(value) if isinstance(value, list | tuple) else str(value)
    return {prefix.rstrip("."): text[:_PARAM_CHARS]}


def numeric(values: dict, prefix: str = "") -> dict[str, float]:
    """The finite numbers of a (nested) result dict, as metric names."""
    out: dict[str, float] = {}
    for key, value in values.items():
        if isinstance(value, dict):
            out.update(numeric(value, f"{prefix}{key}."))
        elif isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
            out[f"{prefix}{key}"] = float(value)
    return out


class PipelineRun:
    """One `twin pipeline` run in MLflow. Created with :meth:`start`; every method logs at once
    (a run that dies half-way shows what it had done, marked FAILED by :meth:`finish`)."""

    def __init__(self, uri: str, client, author: str, run_id: str, experiment_id: str):
        self.uri, self.client, self.author, self.run_id, self.experiment_id = uri, client, author, run_id, experiment_id

    @classmethod
    def start(cls, uri: str, author: str, config: dict, run_name: str | None = None) -> PipelineRun:
        from mlflow.entities import Param

        client = tracking.client(uri)
        experiment = tracking.experiment_id(client, author)
        import time

        run = client.create_run(experiment, run_name=run_name or time.strftime("pipeline-%Y%m%d-%H%M%S"),
                                tags={"twin": author, "mlflow.source.name": "twin pipeline",
                                      "mlflow.source.type": "JOB"})
        self = cls(uri, client, author, run.info.run_id, experiment)
        params = [Param(k, v) for k, v in sorted(flatten(config).items()) if v not in ("", "None")]
        for i in range(0, len(params), _BATCH):
            client.log_batch(self.run_id, params=params[i:i + _BATCH], synchronous=True)
        return self

    def trainer_env(self) -> dict:
        """What training.sft_dpo needs to log its steps as children of this run."""
        return {"tracking_uri": self.uri, "tracking_run": self.run_id}

    def log(self, metrics: dict | None = None, params: dict | None = None, tags: dict | None = None,
            step: int = 0) -> None:
        import time

        from mlflow.entities import Metric, Param, RunTag

        now = int(time.time() * 1000)
        metric_rows = [Metric(k, v, now, step) for k, v in numeric(metrics or {}).items()]
        param_rows = [Param(k, v) for k, v in flatten(params or {}).items()]
        tag_rows = [RunTag(k, str(v)) for k, v in (tags or {}).items()]
        for i in range(0, max(len(metric_rows), len(param_rows), len(tag_rows)), _BATCH):
            self.client.log_batch(self.run_id, metrics=metric_rows[i:i + _BATCH], params=param_rows[i:i + _BATCH],
                                  tags=tag_rows[i:i + _BATCH], synchronous=True)

    def artifact_dir(self, local_dir: str, artifact_path: str) -> None:
        self.client.log_artifacts(self.run_id, local_dir, artifact_path)

    def artifact_json(self, value, name: str) -> None:
        with tempfile.TemporaryDirectory() as folder:
            path = os.path.join(folder, name)
            with open(path, "w") as f:
                json.dump(value, f, indent=2, default=str, ensure_ascii=False)
            self.client.log_artifact(self.run_id, path)

    def register(self, model: dict, servable: bool, why: str) -> str:
        """The adapter (logged under ``adapter``) as a new version of the twin's registered model; the
        ``serving`` alias moves to it when it passed the gate. -> the version number."""
        version = registry.register_version(self.client, self.author, model, source=f"runs:/{self.run_id}/adapter",
                                            run_id=self.run_id, servable=servable, why=why)
        self.log(tags={"registered_version": version, "gate": "PASS" if servable else "FAIL", "gate_reason": why})
        return version

    def finish(self, ok: bool) -> None:
        self.client.set_terminated(self.run_id, "FINISHED" if ok else "FAILED")
