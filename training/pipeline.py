"""`twin pipeline`: a twin from its sources to a registered, evaluated model, one stage after another.

crawl (when sources are given) -> index -> dataset -> train (Ray Train, SFT + DPO, LoRA) ->
evaluate -> register, marked servable when the gate holds. The TwinModel operator's RayJob runs
this with the rendered TwinModel (`PipelineConfig.from_twinmodel`); locally it runs with flags.
Each run is an MLflow run of the twin's experiment, and its adapter a version of the twin's
registered model (training/experiment.py).
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable

from llm_twin import registry, tracking
from llm_twin.config import Settings
from llm_twin.warehouse import Warehouse

from .config import PipelineConfig, TrainConfig


def pipeline_settings(settings: Settings, config: PipelineConfig) -> Settings:
    """The settings with the config's storage (the TwinModel's storage and vector store) applied."""
    return settings.with_overrides(**config.storage.model_dump())


def run(settings: Settings, config: PipelineConfig, say: Callable[[str], None] = print,
        progress: Callable[[str, int, int], None] = lambda *a: None) -> dict:
    """The pipeline inside its MLflow run (a local tracking server is started for it when none runs)."""
    from .experiment import PipelineRun

    settings = pipeline_settings(settings, config)
    with tracking.server(settings, say) as uri:
        tracked = PipelineRun.start(uri, config.author, config.model_dump(mode="json"), run_name=config.version)
        say(f"tracking: MLflow run {tracked.run_id} in experiment {tracking.twin_name(config.author)} at {uri}")
        ok = False
        try:
            result = _run(settings, config, tracked, say, progress)
            ok = True
            return result
        finally:
            tracked.finish(ok)


def _run(settings: Settings, config: PipelineConfig, tracked, say: Callable[[str], None],
         progress: Callable[[str, int, int], None]) -> dict:
    from llm_twin.evaluation.judge import LLMJudge
    from services.crawler.core import Crawler
    from services.embedding.core import Embedder
    from services.generation.core import Generator
    from services.generation.model_store import resolve_model
    from services.retrieval.indexer import Indexer
    from services.retrieval.store import MilvusStore

    from . import datasets, trainer
    from .evaluate import evaluate, gate
    from .sft_dpo import train

    if config.sources.targets():
        crawler = Crawler.from_settings(settings)
        try:
            report = crawler.crawl_sources(config.sources, config.author)
        finally:
            crawler.fetcher.close()
        say(f"crawl: {report.summary()}")
        if not report.ok:
            raise RuntimeError("nothing could be crawled from the twin's sources")
    embedder = Embedder.from_settings(settings)
    store = MilvusStore.from_settings(settings, embedder.dimension)
    say(f"index: {Indexer.from_settings(settings, embedder, store).run().summary()}")

    base_model = resolve_model(config.base_model or settings.generation.model, settings.data_dir)
    # The dataset is built once and its quality is the twin's: the local teacher decodes in full
    # precision whatever the serving quantization is.
    generator = Generator.from_settings(settings.with_overrides(generation_quantization="none"), model=base_model)
    try:
        local = datasets.LocalTeacher(generator)
        teacher = (datasets.OpenAITeacher(config.dataset.teacher_url, config.dataset.teacher_model,
                                          settings.teacher_key or "unused")
                   if config.dataset.teacher_url else local)
        manifest = datasets.build(config.author, Warehouse(settings.resolved_warehouse_uri),
                                  settings.resolved_artifact_uri, teacher, local,
                                  test_fraction=config.dataset.test_fraction, max_examples=config.dataset.max_examples,
                                  rejected_max_tokens=config.dataset.rejected_max_tokens, progress=progress)
    finally:
        generator.engine.close()
    counts = manifest["counts"]
    tracked.log(params={"base_model": base_model, "dataset.digest": manifest["digest"],
                        "dataset.path": manifest["path"]},
                metrics={f"dataset.{k}": v for k, v in counts.items()}, tags={"dataset_reused": manifest["reused"]})
    tracked.artifact_json({k: v for k, v in manifest.items() if k != "reused"}, "dataset_manifest.json")
    say(f"dataset: {'reused' if manifest['reused'] else 'built'} {counts['train']} train / {counts['test']} test "
        f"examples, {counts['preference']} preference pairs ({manifest['path']})")

    output = tempfile.mkdtemp(prefix="twin-train-", dir=str(settings.data_dir))
    cfg = TrainConfig(author=config.author, base_model=base_model, dataset_dir=manifest["path"], output_dir=output,
                      **config.train.model_dump(), **tracked.trainer_env())
    metrics = trainer.run(cfg, str(settings.data_dir.resolve() / "ray")) if config.use_ray else train(cfg.model_dump())
    dpo = (f"; DPO loss {metrics['dpo_loss_first']:.3f} -> {metrics['dpo_loss_last']:.3f}"
           if "dpo_loss_last" in metrics else "")
    say(f"train: SFT loss {metrics.get('sft_loss_first', 0):.3f} -> {metrics.get('sft_loss_last', 0):.3f} in "
        f"{metrics.get('sft_steps')} steps" + dpo)

    version = config.version or f"{manifest['key']}-{output.rsplit('-', 1)[-1]}"
    path = registry.register(settings.resolved_artifact_uri, config.author, version, output, {
        "base_model": base_model, "dataset": manifest["path"], "dataset_digest": manifest["digest"],
        "hyperparameters": cfg.model_dump(exclude={"output_dir", "dataset_dir", "tracking_uri", "tracking_run"}),
        "metrics": metrics, "mlflow_run": tracked.run_id})
    tracked.log(metrics={f"train.{k}": v for k, v in metrics.items()}, params={"version": version})
    judge_url = config.judge.judge_url or settings.judge.url
    judge = LLMJudge(judge_url, config.judge.judge_model or settings.judge.model or "judge",
                     settings.judge.key) if judge_url else None
    result = evaluate(base_model, f"{output}/adapter", config.author, datasets.load(manifest["path"], "test.jsonl"),
                      embedder=embedder, style_examples=4, judge=judge)
    ok, why = gate(result, config.gate)
    model = registry.update(path, evaluation={k: v for k, v in result.items() if k != "samples"}, servable=ok)
    tracked.log(metrics={f"eval.{k}": v for k, v in result.items() if k != "samples"})
    tracked.artifact_json(result.get("samples", []), "evaluation_samples.json")
    tracked.artifact_dir(f"{output}/adapter", "adapter")
    number = tracked.register(model, ok, why)
    for sample in result.get("samples", [])[:2]:
        say(f"  Q: {sample['instruction']}\n    base: {' '.join(sample['base'].split())[:200]}\n"
            f"    twin: {' '.join(sample['twin'].split())[:200]}")
    say(f"evaluate: perplexity base {result['perplexity_base']:.2f} -> twin {result['perplexity_twin']:.2f}; style "
        f"similarity base {result.get('style_base', 0):.3f} -> twin {result.get('style_twin', 0):.3f}; RAG "
        f"faithfulness base {result.get('faithfulness_base', 0):.3f} -> twin "
        f"{result.get('faithfulness_twin', 0):.3f}; gate "
        f"{'PASS' if ok else 'FAIL'} ({why})")
    say(f"registry: {tracking.twin_name(config.author)} version {number}"
        + (f" (alias {tracking.SERVING_ALIAS})" if ok else " (not servable: the serving alias stays)"))
    return {"model": path, "registered_version": number, "mlflow_run": tracked.run_id, "servable": ok,
            "evaluation": result, "metrics": metrics, "dataset": manifest}
