"""Evaluation of a twin against its base model, and the gate that decides whether it may serve.

- perplexity of the author's held-out answers (test split: documents the twin never saw), given
  the instruction in the serving framing: base vs twin;
- style similarity: cosine similarity (all-MiniLM-L6-v2) of generated answers to the author's own
  answers, base vs twin;
- faithfulness of RAG answers to the passage they were given (sentence-level support by
  embedding similarity), base vs twin.
"""

from __future__ import annotations

import math

from llm_twin import prompts
from llm_twin.twinmodel import Gate


def perplexity(model, tokenizer, author: str, rows: list[dict], max_length: int = 512) -> float:
    import torch

    total_loss, total_tokens = 0.0, 0
    model.eval()
    with torch.inference_mode():
        for row in rows:
            messages = prompts.training_example(author, row["instruction"], row["answer"])
            prompt = tokenizer.apply_chat_template(messages[:-1], add_generation_prompt=True, tokenize=False)
            full = tokenizer.apply_chat_template(messages, tokenize=False)
            prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
            ids = tokenizer(full, add_special_tokens=False, return_tensors="pt")["input_ids"][:, :max_length]
            labels = ids.clone()
            labels[:, :len(prompt_ids)] = -100  # only the author's answer counts
            n = int((labels != -100).sum())
            if n == 0:
                continue
            loss = model(input_ids=ids.to(model.device), labels=labels.to(model.device)).loss
            total_loss += float(loss) * n
            total_tokens += n
    return math.exp(total_loss / max(total_tokens, 1))


def generate(model, tokenizer, author: str, instructions: list[str], max_new_tokens: int = 64,
             sources: list[str] | None = None) -> list[str]:
    """Greedy answers in the serving framing; with ``sources``, as RAG answers given that passage."""
    import torch

    out = []
    with torch.inference_mode():
        for i, instruction in enumerate(instructions):
            passages = [prompts.Passage("", sources[i])] if sources else ()
            messages = prompts.chat_messages(author, [{"role": "user", "content": instruction}], passages)
            inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                                   return_dict=True).to(model.device)
            ids = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, repetition_penalty=1.15,
                                 pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id)
            out.append(tokenizer.decode(ids[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True))
    return out


def faithfulness(embedder, answers: list[str], sources: list[str]) -> float:
    """How well RAG answers stay with their sources: for each answer, the mean over its sentences
    of the best cosine similarity to a sentence of its source, averaged over answers."""
    import re

    import numpy as np

    scores = []
    for answer, source in zip(answers, sources, strict=True):
        said = [s for s in re.split(r"(?<=[.!?])\s+", answer.strip()) if len(s.split()) >= 3]
        given = [s for s in re.split(r"(?<=[.!?])\s+", source.strip()) if s.strip()]
        if not said or not given:
            scores.append(0.0)
            continue
        similarity = embedder.embed(said) @ embedder.embed(given).T
        scores.append(float(np.max(similarity, axis=1).mean()))
    return float(np.mean(scores)) if scores else 0.0


def style_similarity(embedder, generated: list[str], references: list[str]) -> float:
    if not generated:
        return 0.0
    a, b = embedder.embed(generated), embedder.embed(references)
    return float((a * b).sum(axis=1).mean())


def judge_style(judge, author: str, instructions: list[str], answers: list[str], references: list[str]) -> dict:
    """The LLM judge's mean style score (1-3) of answers; replies it could not parse are counted, not scored."""
    scores = []
    for instruction, answer, reference in zip(instructions, answers, references, strict=True):
        verdict = judge.judge(instruction, answer, [reference], author)
        if verdict.scores is not None:
            scores.append(verdict.scores["style"])
    return {"judge_style": round(sum(scores) / len(scores), 4) if scores else None,
            "judge_unscored": len(answers) - len(scores), "judge": judge.name}


def evaluate(base_model: str, adapter_dir: str, author: str, test_rows: list[dict], embedder=None,
             style_examples: int = 8, judge=None) -> dict:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(adapter_dir)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_model), adapter_dir)
    with model.disable_adapter():
        base_ppl = perplexity(model, tokenizer, author, test_rows)
    twin_ppl = perplexity(model, tokenizer, author, test_rows)
    result = {"test_examples": len(test_rows), "perplexity_base": round(base_ppl, 4),
              "perplexity_twin": round(twin_ppl, 4), "perplexity_ratio": round(twin_ppl / base_ppl, 4)}
    if embedder is not None and test_rows:
        sample = test_rows[:style_examples]
        instructions, references = [r["instruction"] for r in sample], [r["answer"] for r in sample]
        with model.disable_adapter():
            base_answers = generate(model, tokenizer, author, instructions)
        twin_answers = generate(model, tokenizer, author, instructions)
        with model.disable_adapter():
            base_rag = generate(model, tokenizer, author, instructions, sources=references)
        twin_rag = generate(model, tokenizer, author, instructions, sources=references)
        result.update(style_base=round(style_similarity(embedder, base_answers, references), 4),
                      style_twin=round(style_similarity(embedder, twin_answers, references), 4),
                      faithfulness_base=round(faithfulness(embedder, base_rag, references), 4),
                      faithfulness_twin=round(faithfulness(embedder, twin_rag, references), 4),
                      samples=[{"instruction": i, "base": b, "twin": t}
                               for i, b, t in zip(instructions[:3], base_answers, twin_answers, strict=False)])
        if judge is not None:
            judged = judge_style(judge, author, instructions, twin_answers, references)
            result.update(judge_style_twin=judged["judge_style"], judge_unscored=judged["judge_unscored"],
                          judge=judged["judge"])
    return result


def gate(result: dict, rules: Gate) -> tuple[bool, str]:
    """Whether the twin may be served, and why (the TwinModel's evaluation.gate)."""
    if result["perplexity_ratio"] > rules.max_perplexity_ratio:
        return False, (f"twin perplexity / base = {result['perplexity_ratio']:.3f} > {rules.max_perplexity_ratio}: "
                       "the twin does not model the author's held-out writing better than its base")
    why = f"perplexity ratio {result['perplexity_ratio']:.3f} <= {rules.max_perplexity_ratio}"
    if rules.min_style_similarity > -1:
        if "style_twin" not in result:
            return False, ("minStyleSimilarity is set but style was not measured (no held-out examples "
                           "to compare with): build a dataset with a test split")
        if result["style_twin"] < rules.min_style_similarity:
            return False, (f"style similarity {result['style_twin']:.3f} < minStyleSimilarity "
                           f"{rules.min_style_similarity}: the twin does not write like the author yet")
        why += f"; style similarity {result['style_twin']:.3f} >= {rules.min_style_similarity}"
    if rules.min_judge_style is not None:
        if result.get("judge_style_twin") is None:
            return False, ("minJudgeStyle is set but no judge scored the twin's answers: configure a judge "
                           "(TwinModel evaluation.judge, or TWIN_JUDGE_URL) that answers the JSON asked for")
        if result["judge_style_twin"] < rules.min_judge_style:
            return False, (f"judge style {result['judge_style_twin']:.2f} < minJudgeStyle {rules.min_judge_style}: "
                           "the judge does not find the twin's answers in the author's voice")
        why += f"; judge style {result['judge_style_twin']:.2f} >= {rules.min_judge_style}"
    return True, why
