"""`twin pipeline`: a twin from its sources to a registered, evaluated model, one stage after another.

crawl (when sources are given) -> index -> dataset -> train (Ray Train, SFT + DPO, LoRA) ->
evaluate -> register, marked servable when the gate holds. The TwinModel operator's RayJob runs
this with the rendered TwinModel spec; locally it runs with flags.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field

from llm_twin.config import Settings

from .config import TrainConfig


@dataclass
class PipelineOptions:
    author: str
    sources: list[str] = field(default_factory=list)
    base_model: str | None = None
    version: str | None = None
    max_examples: int = 2000
    test_fraction: float = 0.2
    teacher_url: str | None = None
    teacher_model: str = "gpt-4o-mini"
    rejected_max_tokens: int = 160
    train: dict = field(default_factory=dict)  # TrainConfig fields (sft, dpo, lora, deepspeed, workers...)
    max_perplexity_ratio: float = 1.0
    use_ray: bool = True


def run(settings: Settings, options: PipelineOptions, say: Callable[[str], None] = print,
        progress: Callable[[str, int, int], None] = lambda *a: None) -> dict:
    from llm_twin.app import build_crawler, build_indexer, load_embedder, open_store, open_warehouse
    from services.generation.core import Generator
    from services.generation.model_store import resolve_model
    from services.generation.transformers_backend import TransformersBackend

    from . import datasets, registry, trainer
    from .evaluate import evaluate, gate
    from .sft_dpo import train

    warehouse = open_warehouse(settings)
    if options.sources:
        report = build_crawler(settings, warehouse).crawl(options.sources, options.author)
        say(f"crawl: {report.summary()}")
        if not report.ok:
            raise RuntimeError("nothing could be crawled from the twin's sources")
    embedder = load_embedder(settings)
    say(f"index: {build_indexer(settings, embedder, open_store(settings, embedder.dimension)).run().summary()}")

    base_model = resolve_model(options.base_model or settings.generation_model, settings.data_dir)
    backend = TransformersBackend(base_model, max_batch_size=settings.max_batch_size)
    try:
        local = datasets.LocalTeacher(Generator(backend=backend))
        teacher = datasets.OpenAITeacher(options.teacher_url, options.teacher_model) if options.teacher_url else local
        manifest = datasets.build(options.author, warehouse, settings.resolved_artifact_uri, teacher, local,
                                  test_fraction=options.test_fraction, max_examples=options.max_examples,
                                  rejected_max_tokens=options.rejected_max_tokens, progress=progress)
    finally:
        backend.close()
    counts = manifest["counts"]
    say(f"dataset: {'reused' if manifest['reused'] else 'built'} {counts['train']} train / {counts['test']} test "
        f"examples, {counts['preference']} preference pairs ({manifest['path']})")

    output = tempfile.mkdtemp(prefix="twin-train-", dir=str(settings.data_dir))
    cfg = TrainConfig(author=options.author, base_model=base_model, dataset_dir=manifest["path"], output_dir=output,
                      **options.train)
    metrics = trainer.run(cfg, str(settings.data_dir.resolve() / "ray")) if options.use_ray else train(cfg.model_dump())
    say(f"train: SFT loss {metrics.get('sft_loss_first', 0):.3f} -> {metrics.get('sft_loss_last', 0):.3f} in "
        f"{metrics.get('sft_steps')} steps" + (f"; DPO loss {metrics['dpo_loss_first']:.3f} -> "
                                                f"{metrics['dpo_loss_last']:.3f}" if "dpo_loss_last" in metrics else ""))

    version = options.version or f"{manifest['key']}-{output.rsplit('-', 1)[-1]}"
    path = registry.register(settings.resolved_artifact_uri, options.author, version, output, {
        "base_model": base_model, "dataset": manifest["path"], "dataset_digest": manifest["digest"],
        "hyperparameters": cfg.model_dump(exclude={"output_dir", "dataset_dir"}), "metrics": metrics})
    result = evaluate(base_model, f"{output}/adapter", options.author, datasets.load(manifest["path"], "test.jsonl"),
                      embedder=embedder, style_examples=4)
    ok, why = gate(result, options.max_perplexity_ratio)
    registry.update(path, evaluation={k: v for k, v in result.items() if k != "samples"}, servable=ok)
    for sample in result.get("samples", [])[:2]:
        say(f"  Q: {sample['instruction']}\n    base: {' '.join(sample['base'].split())[:200]}\n"
            f"    twin: {' '.join(sample['twin'].split())[:200]}")
    say(f"evaluate: perplexity base {result['perplexity_base']:.2f} -> twin {result['perplexity_twin']:.2f}; style "
        f"similarity base {result.get('style_base', 0):.3f} -> twin {result.get('style_twin', 0):.3f}; RAG "
        f"faithfulness base {result.get('faithfulness_base', 0):.3f} -> twin {result.get('faithfulness_twin', 0):.3f}; gate "
        f"{'PASS' if ok else 'FAIL'} ({why})")
    return {"model": path, "servable": ok, "evaluation": result, "metrics": metrics, "dataset": manifest}
