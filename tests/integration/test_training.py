"""The training path on CPU: datasets from the sample author (SmolLM2 as the local teacher and
base), SFT + DPO with LoRA on Ray Train (2 workers) for the project's tiny model, evaluation,
registry; plus a LoRA SFT of SmolLM2 whose loss falls."""

from __future__ import annotations

import json

import pytest

from llm_twin import pii
from llm_twin.config import Settings
from llm_twin.documents import RawDocument
from llm_twin.warehouse import Warehouse
from training import datasets
from training.config import TrainConfig
from twin_cli.sample_corpus import AUTHOR, POSTS

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]


@pytest.fixture(scope="module", autouse=True)
def ray_cluster_of_this_module():
    """Ray Train starts a local Ray cluster in this process; stop it when the module is done so no
    Ray process outlives the tests that needed it."""
    yield
    import ray

    if ray.is_initialized():
        ray.shutdown()


@pytest.fixture(scope="module")
def warehouse(tmp_path_factory) -> Warehouse:
    store = Warehouse(Settings(data_dir=tmp_path_factory.mktemp("twin")).resolved_warehouse_uri)
    for slug, (title, paragraphs) in POSTS.items():
        link = f"https://mara.example/{slug}"
        store.put(RawDocument.create(author=AUTHOR, category="article", source=link, link=link, title=title,
                                     text="\n\n".join(paragraphs)))
    return store


@pytest.fixture(scope="module")
def local(smol_model):
    from services.generation.core import Generator
    from services.generation.engines.transformers import Engine as TransformersEngine

    backend = TransformersEngine(str(smol_model), quantization="none", max_batch_size=8)
    yield datasets.LocalTeacher(Generator(backend))
    backend.close()


@pytest.fixture(scope="module")
def dataset(warehouse, local, tmp_path_factory):
    artifacts = str(tmp_path_factory.mktemp("artifacts"))
    manifest = datasets.build(AUTHOR, warehouse, artifacts, local, local, test_fraction=0.2, max_examples=14)
    return manifest, artifacts


def test_dataset_answers_are_the_authors_text_split_by_document(dataset, warehouse):
    manifest, _ = dataset
    train, test = datasets.load(manifest["path"], "train.jsonl"), datasets.load(manifest["path"], "test.jsonl")
    assert train and test
    assert not set(manifest["documents"]["train"]) & set(manifest["documents"]["test"]), "a document leaked"
    passages = {p.passage_id: p for p in datasets.passages(warehouse, AUTHOR)}
    for row in train + test:
        assert row["answer"] == passages[row["passage_id"]].text  # traceable to its source passage
        assert row["instruction"].endswith("?")
        # written through QUESTION_SCHEMA and kept by the check: a question about its passage
        assert datasets.question_problem(row["instruction"], f"{passages[row['passage_id']].title}\n{row['answer']}") \
            is None
    assert sum(manifest["dropped"].values()) == manifest["counts"]["dropped"]
    pairs = datasets.load(manifest["path"], "preference.jsonl")
    assert pairs and all(p["chosen"] == p["answer"] and p["rejected"] != p["chosen"] for p in pairs)
    assert manifest["counts"]["train"] == len(train) and len(manifest["digest"]) == 64


def test_the_same_inputs_reuse_the_dataset(dataset, warehouse, local):
    manifest, artifacts = dataset
    again = datasets.build(AUTHOR, warehouse, artifacts, local, local, test_fraction=0.2, max_examples=14)
    assert again["reused"] and again["digest"] == manifest["digest"]


def test_private_data_is_masked_for_an_external_teacher_and_restored():
    text = ("Write to mara@quill.example or call +44 20 7946 0958; the key sk-abcdefghijklmnop1234 "
            "and host 10.1.2.3 stay here. In 2024 I wrote 3 posts.")
    masked, mapping = pii.mask(text)
    for secret in ("mara@quill.example", "+44 20 7946 0958", "sk-abcdefghijklmnop1234", "10.1.2.3"):
        assert secret not in masked
    assert "2024" in masked and "3 posts" in masked
    assert pii.unmask(masked, mapping) == text


def test_training_configs_are_validated_before_any_work():
    from pydantic import ValidationError

    base = {"author": AUTHOR, "base_model": "m", "dataset_dir": "d", "output_dir": "o"}
    with pytest.raises(ValidationError, match="offload needs zeroStage 2 or 3"):
        TrainConfig(**base, deepspeed={"zero_stage": 1, "offload": True})
    with pytest.raises(ValidationError, match="learning_rate"):
        TrainConfig(**base, sft={"learning_rate": 0.5})
    with pytest.raises(ValidationError, match="workers"):
        TrainConfig(**base, workers=0)
    from training.trainer import check_resources

    with pytest.raises(ValueError, match="need 2 GPUs; the Ray cluster has 0"):
        check_resources(TrainConfig(**base, workers=2, gpus_per_worker=1), {"CPU": 2})


def test_tiny_model_sft_dpo_on_ray_train_two_workers_zero2_then_eval_and_registry(dataset, tmp_path, embedder,
                                                                                  mlflow_server, browser):
    from llm_twin import registry, tracking
    from llm_twin.twinmodel import Gate
    from training import trainer
    from training.evaluate import evaluate, gate
    from training.experiment import PipelineRun
    from training.tiny import build_tiny_model

    manifest, artifacts = dataset
    texts = [" ".join(p) for _, p in POSTS.values()]
    base = build_tiny_model(tmp_path / "tiny", texts)
    run = PipelineRun.start(mlflow_server, AUTHOR, {"train": {"sft": {"max_steps": 4}}, "base_model": str(base)})
    cfg = TrainConfig(author=AUTHOR, base_model=str(base), dataset_dir=manifest["path"],
                      output_dir=str(tmp_path / "out"), workers=2, threads_per_worker=1,
                      sft={"max_steps": 4, "batch_size": 2, "learning_rate": 1e-3},
                      dpo={"max_steps": 2, "batch_size": 2}, lora={"r": 4, "alpha": 8},
                      deepspeed={"zero_stage": 2}, **run.trainer_env())
    metrics = trainer.run(cfg, str(tmp_path / "ray"))
    assert metrics["stage"] == "dpo" and metrics["sft_steps"] == 4 and metrics["dpo_steps"] == 2
    assert (tmp_path / "out" / "adapter" / "adapter_config.json").exists()
    checkpoints = list((tmp_path / "ray").rglob("adapter_config.json"))
    assert checkpoints, "the adapter should be reported to Ray's storage as a checkpoint"

    result = evaluate(str(base), str(tmp_path / "out" / "adapter"), AUTHOR, datasets.load(manifest["path"],
                                                                                          "test.jsonl"),
                      embedder=embedder, style_examples=2)
    # Per-token perplexity over a tiny vocabulary: at least 1, and far below the vocabulary size.
    assert all(1 <= result[k] < 1000 for k in ("perplexity_base", "perplexity_twin")) and "style_twin" in result
    assert result["perplexity_ratio"] == pytest.approx(result["perplexity_twin"] / result["perplexity_base"], rel=1e-3)
    assert -1 <= result["faithfulness_twin"] <= 1 and -1 <= result["faithfulness_base"] <= 1
    # The gate reads the measured figures: just above the measured ratio passes, just below fails.
    ratio, style = result["perplexity_ratio"], result["style_twin"]
    assert gate(result, Gate(max_perplexity_ratio=min(2, ratio + 0.01), min_style_similarity=-1))[0]
    held, why = gate(result, Gate(max_perplexity_ratio=max(0.1, ratio - 0.01), min_style_similarity=-1))
    assert not held and "perplexity" in why
    held, why = gate(result, Gate(max_perplexity_ratio=2, min_style_similarity=min(1, style + 0.01)))
    assert not held and "minStyleSimilarity" in why
    path = registry.register(artifacts, AUTHOR, "v1", str(tmp_path / "out"),
                             {"base_model": str(base), "dataset_digest": manifest["digest"], "metrics": metrics})
    listed = registry.list_models(artifacts)
    assert listed[0]["path"] == path and listed[0]["dataset_digest"] == manifest["digest"]

    # In MLflow: the Ray Train worker of rank 0 logged each trainer's steps as a child run of the
    # pipeline's run (one loss value per step), and the adapter became the serving version.
    client = tracking.client(mlflow_server)
    children = {r.info.run_name: r for r in client.search_runs(
        [run.experiment_id], f"tags.mlflow.parentRunId = '{run.run_id}'")}
    assert set(children) == {"sft", "dpo"}
    assert [m.step for m in client.get_metric_history(children["sft"].info.run_id, "loss")] == [1, 2, 3, 4]
    assert len(client.get_metric_history(children["dpo"].info.run_id, "loss")) == 2
    assert children["sft"].data.params["learning_rate"] == "0.001"
    run.log(metrics={f"eval.{k}": v for k, v in result.items() if k != "samples"})
    run.artifact_dir(str(tmp_path / "out" / "adapter"), "adapter")
    number = run.register(registry.update(path, servable=True), True, "passed")
    run.finish(True)
    logged = client.get_run(run.run_id).data
    assert logged.params["train.sft.max_steps"] == "4"
    assert logged.metrics["eval.perplexity_twin"] == pytest.approx(result["perplexity_twin"])
    assert logged.tags["registered_version"] == number and logged.tags["gate"] == "PASS"
    serving = client.get_model_version_by_alias(tracking.twin_name(AUTHOR), tracking.SERVING_ALIAS)
    assert serving.version == number and serving.run_id == run.run_id and serving.tags["twin.version"] == "v1"
    assert {"adapter_config.json", "adapter_model.safetensors"} <= {
        a.path.rsplit("/", 1)[-1] for a in client.list_artifacts(run.run_id, "adapter")}

    # MLflow's UI shows the SFT loss curve and the pipeline run's figures (screenshots for the docs).
    from tests.integration.test_mlflow import _page

    sft = children["sft"].info.run_id
    _page(browser, f"{mlflow_server}/#/experiments/{run.experiment_id}/runs/{sft}/model-metrics", "loss",
          "mlflow-sft-run.png")
    text = _page(browser, f"{mlflow_server}/#/experiments/{run.experiment_id}/runs/{run.run_id}", "gate",
                 "mlflow-pipeline-run.png")
    assert "PASS" in text


def test_lora_sft_of_smollm2_lowers_its_loss(dataset, smol_model, tmp_path):
    from training.sft_dpo import train

    manifest, _ = dataset
    cfg = TrainConfig(author=AUTHOR, base_model=str(smol_model), dataset_dir=manifest["path"],
                      output_dir=str(tmp_path / "out"), threads_per_worker=2,
                      sft={"max_steps": 8, "batch_size": 2, "learning_rate": 1e-3, "max_length": 384},
                      dpo={"enabled": False}, lora={"r": 8, "alpha": 16})
    metrics = train(cfg.model_dump())
    assert metrics["sft_steps"] == 8
    assert metrics["sft_loss_last"] < metrics["sft_loss_first"], metrics
    assert json.loads((tmp_path / "out" / "metrics.json").read_text())["sft_steps"] == 8
