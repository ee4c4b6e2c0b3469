"""Training: datasets, training runs, model evaluation, the registry, and the whole pipeline.
Their flags come from the configuration classes (`config_options`)."""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

import click
from pydantic import ValidationError

from llm_twin.config import Settings
from llm_twin.twinmodel import Gate, InvalidSpec, TrainSettings
from training.config import DatasetSettings, PipelineConfig, TrainConfig

from .common import StageBars, fail, settings_of
from .config_options import config_options, explain, given_values
from .data_commands import eval_group


def _teacher_from_env(dataset: dict) -> dict:
    """TWIN_TEACHER_URL / TWIN_TEACHER_MODEL stand in for the flags when those are not given."""
    for field, variable in (("teacher_url", "TWIN_TEACHER_URL"), ("teacher_model", "TWIN_TEACHER_MODEL")):
        if field not in dataset and os.environ.get(variable):
            dataset[field] = os.environ[variable]
    return dataset


def _local_generator(settings: Settings):
    """The local teacher: full precision, whatever the serving quantization (see training/pipeline.py)."""
    from services.generation.core import Generator

    return Generator.from_settings(settings.with_overrides(generation_quantization="none"))


QLORA_HELP = ("QLoRA: the base model held in 4-bit while the adapter trains (= --lora-quantization 4bit; GPU "
              "workers with bitsandbytes).")


def _with_qlora(given: dict, qlora: bool) -> dict:
    """--qlora as the field it stands for (train.lora.quantization)."""
    if qlora:
        lora = given.setdefault("train", {}).setdefault("lora", {})
        if lora.get("quantization", "4bit") != "4bit":
            fail("--qlora and --lora-quantization none disagree: give one of them", 2)
        lora["quantization"] = "4bit"
    return given

@click.group("dataset")
def dataset_group() -> None:
    """Instruction and preference datasets from an author's writing."""


@dataset_group.command("build")
@click.option("--author", required=True, help="Whose writing, e.g. 'Mara Quill'.")
@config_options(DatasetSettings, section="dataset")
@click.pass_context
def dataset_build(ctx: click.Context, author, **flags) -> None:
    """Backtranslated instructions (the author's text is the answer) and preference pairs."""
    from llm_twin.warehouse import Warehouse
    from training import datasets

    settings = settings_of(ctx)
    try:
        cfg = DatasetSettings(**_teacher_from_env(given_values(flags).get("dataset", {})))
    except ValidationError as exc:
        fail("invalid dataset configuration:\n" + explain(exc), 2)
    generator = _local_generator(settings)
    base = datasets.LocalTeacher(generator)
    teacher = datasets.OpenAITeacher(cfg.teacher_url, cfg.teacher_model, settings.teacher_key or "unused") \
        if cfg.teacher_url else base
    with StageBars() as progress:
        try:
            manifest = datasets.build(author, Warehouse(settings.resolved_warehouse_uri),
                                      settings.resolved_artifact_uri,
                                      teacher, base, test_fraction=cfg.test_fraction, max_examples=cfg.max_examples,
                                      rejected_max_tokens=cfg.rejected_max_tokens, progress=progress)
        except ValueError as exc:
            fail(str(exc))
        finally:
            generator.engine.close()
    counts = manifest["counts"]
    click.echo(f"{'reused' if manifest['reused'] else 'built'} {manifest['path']}: {counts['train']} train, "
               f"{counts['test']} test ({len(manifest['documents']['test'])} held-out documents), "
               f"{counts['preference']} preference pairs, {counts['dropped']} passages dropped; digest "
               f"{manifest['digest'][:12]}")


@click.command()
@click.option("--author", required=True)
@click.option("--dataset", "dataset_dir", required=True, help="Path printed by `twin dataset build`.")
@click.option("--base-model", help="Default: the serving model (SmolLM2-135M-Instruct).")
@config_options(TrainSettings, section="train")
@click.option("--qlora", is_flag=True, help=QLORA_HELP)
@click.option("--no-ray", is_flag=True, help="Run the training function in this process (one worker).")
@click.pass_context
def train(ctx: click.Context, author, dataset_dir, base_model, qlora, no_ray, **flags) -> None:
    """SFT then DPO with a LoRA adapter (Ray Train + TRL), registered in the artifact store."""
    from llm_twin import registry
    from services.generation.model_store import resolve_model
    from training import trainer
    from training.sft_dpo import train as train_here

    settings = settings_of(ctx)
    base_model = base_model or resolve_model(settings.generation.model, settings.data_dir)
    output = tempfile.mkdtemp(prefix="twin-train-", dir=settings.data_dir)
    try:
        cfg = TrainConfig(author=author, base_model=base_model, dataset_dir=dataset_dir, output_dir=output,
                          **_with_qlora(given_values(flags), qlora).get("train", {}))
    except ValidationError as exc:
        fail("invalid training configuration:\n" + explain(exc), 2)
    try:
        metrics = train_here(cfg.model_dump()) if no_ray else trainer.run(cfg, str(settings.data_dir.resolve() / "ray"))
    except ValueError as exc:
        fail(str(exc), 2)
    manifest_path = Path(dataset_dir) / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
    version = f"{manifest.get('key', 'local')}-{os.path.basename(output).split('-')[-1]}"
    path = registry.register(settings.resolved_artifact_uri, author, version, output, {
        "base_model": base_model, "dataset": dataset_dir, "dataset_digest": manifest.get("digest"),
        "hyperparameters": cfg.model_dump(exclude={"output_dir", "dataset_dir"}), "metrics": metrics})
    click.echo(f"registered {path}: " + ", ".join(f"{k} {v}" for k, v in metrics.items() if k != "stage"))


@eval_group.command("model")
@click.option("--model", "model_path", required=True, help="A registered model folder (see `twin models list`).")
@click.option("--dataset", "dataset_dir", help="Default: the dataset the model was trained on.")
@config_options(Gate, section="gate")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def eval_model(ctx: click.Context, model_path, dataset_dir, as_json, **flags) -> None:
    """Perplexity on the author's held-out documents and style similarity, base vs twin, and the gate."""
    from llm_twin import registry
    from services.embedding.core import Embedder
    from training import datasets
    from training.evaluate import evaluate, gate

    try:
        rules = Gate(**given_values(flags).get("gate", {}))
    except ValidationError as exc:
        fail("invalid gate:\n" + explain(exc), 2)
    meta = json.loads((Path(model_path) / "metadata.json").read_text())
    rows = datasets.load(dataset_dir or meta["dataset"], "test.jsonl")
    if not rows:
        fail("the dataset has no held-out examples to evaluate on")
    from llm_twin.evaluation.judge import LLMJudge

    judge = LLMJudge.from_settings(settings_of(ctx))
    if rules.min_judge_style is not None and judge is None:
        fail("--min-judge-style needs a judge: set TWIN_JUDGE_URL (and TWIN_JUDGE_MODEL, TWIN_JUDGE_KEY)", 2)
    result = evaluate(meta["base_model"], os.path.join(model_path, "adapter"), meta["author"], rows,
                      embedder=Embedder.from_settings(settings_of(ctx)), judge=judge)
    ok, why = gate(result, rules)
    result.update(gate_passed=ok, gate=why)
    (Path(model_path) / "evaluation.json").write_text(json.dumps(result, indent=2))
    model = registry.update(model_path, evaluation={k: v for k, v in result.items() if k != "samples"}, servable=ok)
    from llm_twin import tracking

    uri = tracking.resolve_uri(settings_of(ctx))  # the verdict in MLflow too; a pass moves the serving alias
    if uri:
        number = registry.publish(settings_of(ctx), uri, model, why)
        click.echo(f"MLflow: {tracking.twin_name(model['author'])} version {number}"
                   + (f" ({tracking.SERVING_ALIAS})" if ok else ""), err=True)
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    click.echo(f"perplexity base {result['perplexity_base']:.2f} -> twin {result['perplexity_twin']:.2f} "
               f"(ratio {result['perplexity_ratio']:.3f}) on {result['test_examples']} held-out examples")
    if "style_twin" in result:
        click.echo(f"style similarity base {result['style_base']:.3f} -> twin {result['style_twin']:.3f}")
    if "judge" in result:
        click.echo(f"judge style {result['judge_style_twin']} ({result['judge']}; {result['judge_unscored']} unscored)")
        for s in result.get("samples", []):
            click.echo(f"  Q: {s['instruction']}\n    base: {s['base'][:160]}\n    twin: {s['twin'][:160]}")
    click.echo(f"gate: {'PASS' if ok else 'FAIL'} ({why})")
    if not ok:
        sys.exit(3)


@click.group("models")
def models_group() -> None:
    """The model registry."""


@models_group.command("list")
@click.pass_context
def models_list(ctx: click.Context) -> None:
    from llm_twin import registry, tracking
    from llm_twin.registry import list_models

    settings = settings_of(ctx)
    found = list_models(settings.resolved_artifact_uri)
    if not found:
        click.echo("no models yet: `twin dataset build` then `twin train`")
    uri = tracking.resolve_uri(settings)
    serving = {}
    if uri:  # the versions the serving aliases name (MLflow, when a server runs or is configured)
        client = tracking.client(uri)
        serving = {a: registry.serving_version(client, a) for a in {m["author"] for m in found}}
    for m in found:
        mark = "  SERVING" if serving.get(m["author"]) == m["version"] else ""
        click.echo(f"{m['author']}  {m['version']}  base {m['base_model']}  {m['registered']}  {m['path']}{mark}")


@models_group.command("sync")
@click.pass_context
def models_sync(ctx: click.Context) -> None:
    """Register in MLflow the registry folders it does not know (older registries, `twin train`)."""
    from llm_twin import registry, tracking

    settings = settings_of(ctx)
    try:
        with tracking.server(settings, lambda m: click.echo(m, err=True)) as uri:
            done = registry.sync(settings, uri, lambda m: click.echo(m, err=True))
    except tracking.TrackingError as exc:
        fail(str(exc))
    click.echo(f"{len(done)} model(s) registered" if done else "MLflow already knows every registered model")


def resolved_config(settings: Settings, config: PipelineConfig) -> dict:
    """What `--print-config` shows: the pipeline's config and the storage it will use (secrets
    only as set / not set)."""
    from training.pipeline import pipeline_settings

    effective = pipeline_settings(settings, config)
    return {"pipeline": config.model_dump(mode="json"),
            "storage": {"warehouse_uri": effective.resolved_warehouse_uri,
                        "artifact_uri": effective.resolved_artifact_uri,
                        "milvus_uri": effective.resolved_milvus_uri, "collection": effective.collection},
            "secrets": {"teacher_key": bool(effective.teacher_key), "milvus_token": bool(effective.milvus_token),
                        "judge_key": bool(effective.judge.key)}}


@click.command()
@click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="A rendered TwinModel (the operator's ConfigMap): its spec is the whole configuration.")
@click.option("--author", help="Without --config: the twin's author (their writing already crawled).")
@click.option("--base-model", help="Without --config: default the serving model (SmolLM2-135M-Instruct).")
@config_options(DatasetSettings, section="dataset")
@config_options(TrainSettings, section="train")
@config_options(Gate, section="gate")
@click.option("--qlora", is_flag=True, help=QLORA_HELP)
@click.option("--no-ray", is_flag=True, help="Train in this process instead of Ray Train workers.")
@click.option("--print-config", is_flag=True, help="Print the resolved configuration as JSON and do nothing else.")
@click.pass_context
def pipeline(ctx: click.Context, config_path, author, base_model, qlora, no_ray, print_config, **flags) -> None:
    """A twin end to end: crawl -> index -> dataset -> train (SFT + DPO) -> evaluate -> register."""
    from training.pipeline import run

    settings = settings_of(ctx)
    given = _with_qlora(given_values(flags), qlora)
    try:
        if config_path:
            if author or base_model or given:
                fail("--config carries the whole configuration (the TwinModel's spec): drop the other flags, "
                     "or change the TwinModel", 2)
            config = PipelineConfig.from_twinmodel(json.loads(config_path.read_text()))
            config = config.model_copy(update={"use_ray": not no_ray})
        elif author:
            given["dataset"] = _teacher_from_env(given.get("dataset", {}))
            config = PipelineConfig(author=author, base_model=base_model, use_ray=not no_ray, **given)
        else:
            fail("give --config (a rendered TwinModel) or --author", 2)
    except InvalidSpec as exc:
        fail(f"invalid TwinModel: {exc}", 2)
    except ValidationError as exc:
        fail("invalid pipeline configuration:\n" + explain(exc), 2)
    except ValueError as exc:  # not JSON
        fail(f"{config_path}: {exc}", 2)
    if print_config:
        click.echo(json.dumps(resolved_config(settings, config), indent=2))
        return
    with StageBars() as progress:
        try:
            result = run(settings, config, say=click.echo, progress=progress)
        except (ValueError, RuntimeError) as exc:
            fail(str(exc), 3)
    click.echo(f"registered {result['model']} ({'servable' if result['servable'] else 'held back by the gate'})")
    if not result["servable"]:
        sys.exit(4)


@click.group("embedder")
def embedder_group() -> None:
    """The embedding model adapted to the twins' own writing."""


@embedder_group.command("adapt")
@click.option("--author", "authors", multiple=True, help="Only these twins' datasets (slug; default: all).")
@click.option("--epochs", type=click.IntRange(1, 20), default=1, show_default=True)
@click.option("--batch-size", type=click.IntRange(4, 256), default=32, show_default=True,
              help="Questions per batch (each is contrasted with every other passage of its batch).")
@click.pass_context
def embedder_adapt(ctx: click.Context, authors, epochs, batch_size) -> None:
    """Train the embedder on the (question, passage) pairs of the datasets `twin dataset build` /
    `twin pipeline` wrote, into a versioned folder under <data_dir>/embedders/."""
    from services.retrieval.relevance import calibration_path
    from training.embedder import AdaptConfig, adapt, pairs_from_datasets

    settings = settings_of(ctx)
    pairs = pairs_from_datasets(settings.resolved_artifact_uri, authors or None)
    try:
        out = adapt(pairs, settings.data_dir / "embedders", settings.embedding.model,
                    AdaptConfig(epochs=epochs, batch_size=batch_size), progress=click.echo)
    except ValueError as exc:
        fail(str(exc))
    own = calibration_path(settings.data_dir, str(out))
    click.echo(f"to use it: TWIN_EMBEDDING__MODEL={out} twin index   (re-embeds every document once), then\n"
               f"  twin eval relevance --calibrate LABELLED.jsonl   (writes {own}; until then a similarity cut "
               "decides what the twin declines)")


@click.command("mask-pii")
@click.option("--show-map", is_flag=True, help="Also print the placeholder map (to stderr).")
def mask_pii(show_map) -> None:
    """Mask private data in stdin as the dataset builder does before text leaves for a teacher."""
    from llm_twin import pii

    masked, mapping = pii.mask(sys.stdin.read())
    sys.stdout.write(masked)
    if show_map:
        click.echo(json.dumps(mapping, indent=1), err=True)


COMMANDS = [dataset_group, train, models_group, pipeline, embedder_group, mask_pii]
