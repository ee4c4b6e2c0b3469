"""MLflow as the registry's source of truth and the tracking server's lifecycle, on real servers."""

from __future__ import annotations

import os
import uuid

import pytest

from llm_twin import registry, tracking
from llm_twin.config import Settings


def _folder_model(artifacts: str, author: str, version: str, tmp_path, servable: bool = True) -> dict:
    out = tmp_path / f"out-{version}"
    (out / "adapter").mkdir(parents=True)
    (out / "adapter" / "adapter_config.json").write_text("{}")
    path = registry.register(artifacts, author, version, str(out), {"base_model": "b", "metrics": {"sft_loss_last": 1}})
    return registry.update(path, servable=servable)


def test_the_serving_alias_not_the_newest_folder_decides_what_serves(tmp_path, mlflow_server, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    settings = Settings(data_dir=tmp_path)
    author = f"Ada {uuid.uuid4().hex[:6]}"
    for version in ("v1", "v2"):
        _folder_model(settings.resolved_artifact_uri, author, version, tmp_path)
    _folder_model(settings.resolved_artifact_uri, author, "v3-failed", tmp_path, servable=False)
    assert len(registry.sync(settings, mlflow_server, say=lambda _: None)) == 3
    assert registry.sync(settings, mlflow_server, say=lambda _: None) == []  # idempotent
    client = tracking.client(mlflow_server)
    name = tracking.twin_name(author)
    assert len(client.search_model_versions(f"name = '{name}'")) == 3
    assert registry.serving(settings, author)["version"] == "v2"  # no alias yet: the newest servable got it
    v1 = client.search_model_versions(f"name = '{name}' and tag.`twin.version` = 'v1'")[0]
    assert v1.source.startswith("runs:/") and {a.path for a in client.list_artifacts(v1.run_id, "adapter")} == {
        "adapter/adapter_config.json"}
    client.set_registered_model_alias(name, tracking.SERVING_ALIAS, v1.version)  # a rollback in the UI
    assert registry.serving(settings, author)["version"] == "v1"
    assert registry.latest(settings.resolved_artifact_uri, author)["version"] == "v2"  # what the folders alone say
    assert registry.serving(settings, author, pinned="v2")["version"] == "v2"
    assert registry.serving(settings, author, pinned=v1.version)["version"] == "v1"  # an MLflow version number
    assert registry.serving(settings, author, pinned="v3-failed") is None  # held back by the gate
    assert registry.serving(settings, author, pinned="nope") is None
    assert registry.serving(settings, "Nobody Yet") is None
    # `twin eval model` passing a held-back model: its verdict in MLflow, and the alias moves to it.
    held = registry.latest(settings.resolved_artifact_uri, author, servable_only=False, version="v3-failed")
    number = registry.publish(settings, mlflow_server, registry.update(held["path"], servable=True), "re-evaluated")
    assert registry.serving(settings, author)["version"] == "v3-failed"
    assert client.get_model_version(name, number).tags["gate"] == "re-evaluated"
    assert len(client.search_model_versions(f"name = '{name}'")) == 3  # the same version, not a fourth


def test_tracking_uri_must_be_a_server_and_the_local_one_lives_as_long_as_its_block(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    for bad in ("sqlite:///x.db", "/tmp/mlruns", "file:///tmp/mlruns"):
        with pytest.raises(tracking.TrackingError, match="http"):
            tracking.configured_uri(Settings(data_dir=tmp_path, tracking_uri=bad))
    assert tracking.configured_uri(Settings(data_dir=tmp_path, tracking_uri="http://mlflow:5000/")) == \
        "http://mlflow:5000"
    settings = Settings(data_dir=tmp_path)
    assert tracking.resolve_uri(settings) is None
    with tracking.server(settings, say=lambda _: None) as uri:
        pid = int(__import__("json").loads((tmp_path / tracking.STATE_FILE).read_text())["pid"])
        assert tracking.resolve_uri(settings) == uri and tracking.running_local(tmp_path) == uri
        group = [p for p in os.listdir("/proc") if p.isdigit() and _pgid(int(p)) == pid]
        assert len(group) >= 2  # the server and its web worker
        with tracking.server(settings, say=lambda _: None) as again:
            assert again == uri  # reused, not a second server
    assert not (tmp_path / tracking.STATE_FILE).exists() and tracking.resolve_uri(settings) is None
    assert not [p for p in os.listdir("/proc") if p.isdigit() and _pgid(int(p)) == pid], "left processes behind"


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except ProcessLookupError:
        return None


def test_a_pipeline_config_becomes_flat_params_and_numeric_metrics():
    from training.experiment import flatten, numeric

    assert flatten({"train": {"sft": {"learning_rate": 0.0002}, "lora": {"target_modules": ["q", "v"]}}}) == {
        "train.sft.learning_rate": "0.0002", "train.lora.target_modules": '["q", "v"]'}
    assert numeric({"a": 1, "b": True, "c": float("nan"), "d": {"e": 2.5}, "f": "x"}) == {"a": 1.0, "d.e": 2.5}


def test_an_unreachable_tracking_server_is_a_clear_error_for_serving(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    settings = Settings(data_dir=tmp_path, tracking_uri="http://127.0.0.1:9")  # nothing listens there
    with pytest.raises(tracking.TrackingError, match="MLflow server at http://127.0.0.1:9 could not say"):
        registry.serving(settings, "Ada")
