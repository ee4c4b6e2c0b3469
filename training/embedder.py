"""Adapt the embedding model to the twin's own corpus: (question, passage) pairs from the dataset
step (the teacher's question for each passage) train the embedder with in-batch negatives
(sentence-transformers' MultipleNegativesRankingLoss: each question against its own passage and
every other passage of the batch), a few minutes on CPU.

The result is a versioned folder, ``<data_dir>/embedders/<version>/``: the sentence-transformers
model plus ``adapted.json`` (base model, the pairs' digest, hyperparameters, when). The version is
a digest of those inputs, so the same pairs and settings give the same folder (reused, not
retrained). Point ``embedding.model`` at it and `twin index` re-embeds (the indexer keys every
document on the embedder's name, so documents are re-embedded once, incrementally); calibrate the
answer-or-decline decision for it with `twin eval relevance --calibrate` (until then its
similarity cut decides). docs/evaluation.md has its figures against the stock model.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

ADAPTED_MANIFEST = "adapted.json"


@dataclass(frozen=True)
class AdaptConfig:
    epochs: int = 1
    batch_size: int = 32
    learning_rate: float = 2e-5
    warmup_ratio: float = 0.1
    max_pairs: int = 4000
    seed: int = 13


def pairs_from_datasets(artifact_uri: str, authors: Sequence[str] | None = None) -> list[tuple[str, str]]:
    """(question, passage) of every dataset the dataset step built (train split only: the test
    split stays out of everything that trains), newest dataset per author."""
    import fsspec

    fs, root = fsspec.core.url_to_fs(f"{artifact_uri.rstrip('/')}/datasets")
    if not fs.exists(root):
        return []
    out: list[tuple[str, str]] = []
    for author_dir in sorted(fs.ls(root, detail=False)):
        if authors and Path(author_dir).name not in authors:
            continue
        manifests = [m for m in fs.glob(f"{author_dir}/*/manifest.json")]
        if not manifests:
            continue
        newest = max(manifests, key=lambda m: fs.info(m).get("mtime") or fs.info(m).get("created") or 0)
        with fs.open(newest.replace("manifest.json", "train.jsonl")) as f:
            for line in f:
                row = json.loads(line)
                out.append((row["instruction"], row["answer"]))
    return out


def version_of(base: str, pairs: Sequence[tuple[str, str]], config: AdaptConfig) -> str:
    digest = hashlib.sha256(json.dumps([base, sorted(pairs), asdict(config)]).encode()).hexdigest()
    return f"adapted-{digest[:12]}"


def adapt(pairs: Sequence[tuple[str, str]], out_root: Path, base_model: str | None = None,
          config: AdaptConfig | None = None, progress: Callable[[str], None] = print) -> Path:
    """Train on ``pairs`` from ``base_model`` (None: the packaged all-MiniLM-L6-v2) -> the folder."""
    from datasets import Dataset
    from sentence_transformers import SentenceTransformer, losses
    from sentence_transformers.trainer import SentenceTransformerTrainer
    from sentence_transformers.training_args import BatchSamplers, SentenceTransformerTrainingArguments

    from services.embedding.core import default_model_path

    config = config or AdaptConfig()
    pairs = [(q.strip(), p.strip()) for q, p in pairs if q.strip() and p.strip()]
    if len(pairs) < config.batch_size:
        raise ValueError(f"{len(pairs)} (question, passage) pairs; adapting needs at least {config.batch_size}: "
                         "build the dataset first (twin pipeline / twin dataset) or add more of the author's writing")
    base = base_model or default_model_path()
    version = version_of(str(base_model or "all-MiniLM-L6-v2"), pairs, config)
    out = Path(out_root) / version
    if (out / ADAPTED_MANIFEST).is_file():
        progress(f"embedder {version}: already adapted, reused")
        return out
    random.Random(config.seed).shuffle(pairs := list(pairs))
    pairs = pairs[:config.max_pairs]
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    model = SentenceTransformer(str(base), device="cpu")
    data = Dataset.from_dict({"anchor": [q for q, _ in pairs], "positive": [p for _, p in pairs]})
    args = SentenceTransformerTrainingArguments(
        output_dir=str(out.with_suffix(".work")), num_train_epochs=config.epochs,
        per_device_train_batch_size=config.batch_size, learning_rate=config.learning_rate,
        warmup_ratio=config.warmup_ratio, seed=config.seed, report_to=[], save_strategy="no",
        logging_steps=10, batch_sampler=BatchSamplers.NO_DUPLICATES, disable_tqdm=True, use_cpu=True)
    started = time.monotonic()
    progress(f"embedder {version}: training on {len(pairs)} pairs, {config.epochs} epoch(s)")
    SentenceTransformerTrainer(model=model, args=args, train_dataset=data,
                               loss=losses.MultipleNegativesRankingLoss(model)).train()
    tmp = out.with_suffix(".tmp")
    model.save(str(tmp))
    manifest = {"version": version, "base_model": str(base_model or "all-MiniLM-L6-v2"), "pairs": len(pairs),
                "pairs_digest": hashlib.sha256(json.dumps(sorted(pairs)).encode()).hexdigest(),
                "config": asdict(config), "seconds": round(time.monotonic() - started, 1),
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    (tmp / ADAPTED_MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
    tmp.rename(out)  # the folder appears whole, or not at all
    progress(f"embedder {version}: adapted in {manifest['seconds']:.0f} s -> {out}")
    return out
