"""Stand-in for TensorRT-LLM's LLM API (tensorrt_llm.LLM, SamplingParams), following its documented
behaviour: generate_async(..., streaming=True) returns a result that is async-iterable, each
item a cumulative RequestOutput whose outputs[0].text_diff is the new text; abort() stops it.
It "generates" the words of a fixed sentence, one token per word, so tests can check the contract."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

WORDS = ["the", "twin", "answers", "in", "the", "author's", "own", "words", "and", "cites", "the", "sources", "it",
         "was", "given"]


@dataclass
class SamplingParams:
    max_tokens: int = 32
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    repetition_penalty: float = 1.0
    top_k: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0


@dataclass
class CompletionOutput:
    index: int = 0
    text: str = ""
    text_diff: str = ""
    token_ids: list = field(default_factory=list)
    finish_reason: str | None = None


@dataclass
class RequestOutput:
    prompt: str
    prompt_token_ids: list
    outputs: list
    finished: bool = False


class _Tokenizer:
    def encode(self, text, add_special_tokens=False):
        return text.split()

    def apply_chat_template(self, messages, add_generation_prompt=True, tokenize=False):
        turns = "".join(f"<{m['role']}>{m['content']}\n" for m in messages)
        return turns + ("<assistant>" if add_generation_prompt else "")


class GenerationResult:
    def __init__(self, llm, prompt, params: SamplingParams, lora_request):
        self.llm, self.prompt, self.params, self.lora_request = llm, prompt, params, lora_request
        self.aborted = False

    def abort(self):
        self.aborted = True
        self.llm.aborted += 1

    async def _steps(self):
        tokens, text = [], ""
        prompt_ids = self.prompt.split()
        for i in range(self.params.max_tokens):
            if self.aborted:
                return
            await asyncio.sleep(0)
            word = WORDS[i % len(WORDS)]
            diff = word if i == 0 else " " + word
            tokens.append(i)
            text += diff
            done = i + 1 == self.params.max_tokens or i + 1 == len(WORDS)
            reason = ("length" if i + 1 == self.params.max_tokens else "stop") if done else None
            yield RequestOutput(self.prompt, prompt_ids, [CompletionOutput(0, text, diff, list(tokens), reason)], done)
            if done:
                return

    def __aiter__(self):
        return self._steps().__aiter__()


class LLM:
    def __init__(self, model=None, lora_config=None, **kwargs):
        self.model, self.lora_config = model, lora_config
        self.tokenizer = _Tokenizer()
        self.requests: list[GenerationResult] = []
        self.aborted = 0

    def generate_async(self, inputs, sampling_params=None, lora_request=None, streaming=False, **kwargs):
        assert streaming, "the backend streams"
        result = GenerationResult(self, inputs, sampling_params or SamplingParams(), lora_request)
        self.requests.append(result)
        return result

    def shutdown(self):
        pass
