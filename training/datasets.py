"""Instruction and preference datasets from an author's own writing, as versioned artifacts.

Read top to bottom:
1. passages: the author's cleaned documents (the index's own cleaning and deduplication), cut
   into passages of whole paragraphs; every passage keeps its document id;
2. instructions by backtranslation: a teacher writes the question each passage answers (an
   OpenAI-compatible endpoint when configured, with private data masked; else the local model),
   through a schema (QUESTION_SCHEMA: one question, 15-200 characters, opening like a question and
   ending with "?"), so even the small local model writes a question rather than a reply;
3. a check of their own (``question_problem``: a question about the passage, not a reply to it, not
   about "the passage"), deduplication, split by document (no document in both halves);
4. preference pairs: chosen = the author's passage, rejected = the base model's own answer;
5. the artifact: JSONL files and a manifest (counts, digest, source document ids, generator
   settings) under ``<artifacts>/datasets/<author>/<key>``, where the key hashes the inputs, so a
   re-run with the same inputs reuses it.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import fsspec

from llm_twin import pii, prompts
from llm_twin.documents import author_slug
from llm_twin.features.clean import clean_corpus, paragraphs
from llm_twin.warehouse import Warehouse

DATASET_VERSION = "2"  # 2: instructions written through QUESTION_SCHEMA and checked by question_problem
QUESTION_PROMPT = (
    "Here is a passage from \"{title}\", written by {author}:\n\n{passage}\n\n"
    "Write the one question about {title} that a reader would ask and this passage answers. "
    "Reply with the question only, in one sentence."
)
QUESTION_WORDS = ("What", "How", "Why", "When", "Where", "Which", "Who", "Can", "Could", "Should", "Would", "Will",
                  "Is", "Are", "Do", "Does", "Did", "Has", "Have", "In what", "For what")
QUESTION_SCHEMA = {
    "type": "object",
    "properties": {"question": {"type": "string", "minLength": 15, "maxLength": 200,
                                "pattern": f"^({'|'.join(QUESTION_WORDS)}) [^\\n?]*\\?$"}},
    "required": ["question"], "additionalProperties": False}


@dataclass(frozen=True)
class Passage:
    doc_id: str
    passage_id: str
    title: str
    text: str


@dataclass(frozen=True)
class Example:
    doc_id: str
    passage_id: str
    instruction: str
    answer: str  # the author's own text


class Teacher:
    """Writes instructions (and, as the base model, rejected answers). ``complete`` takes chat
    conversations and returns one reply each."""

    name: str = "teacher"
    external: bool = False

    def complete(self, conversations: Sequence[list[dict]], max_tokens: int,
                 json_schema: dict | None = None) -> list[str]:
        """One reply per conversation; ``json_schema``: each reply is JSON valid against it
        (constrained decoding where the model is served with it)."""
        raise NotImplementedError


class LocalTeacher(Teacher):
    """The local generation model (the transformers backend), batched."""

    external = False

    def __init__(self, generator, concurrency: int = 8):
        self.generator = generator
        self.concurrency = concurrency  # in flight at once: the engine decodes them as one batch
        self.name = f"local:{generator.model_id}"

    def complete(self, conversations: Sequence[list[dict]], max_tokens: int,
                 json_schema: dict | None = None) -> list[str]:
        async def run():
            params = self.generator.limits.params(max_tokens=max_tokens, repetition_penalty=1.15,
                                                  json_schema=json_schema)
            slots = asyncio.Semaphore(self.concurrency)

            async def one(conversation):
                async with slots:
                    return (await self.generator.complete(conversation, params)).text.strip()

            return list(await asyncio.gather(*(one(c) for c in conversations)))

        return asyncio.run(run())


class OpenAITeacher(Teacher):
    """Any OpenAI-compatible endpoint. Private data is masked before it leaves and restored after."""

    external = True

    def __init__(self, base_url: str, model: str, api_key: str = "unused", concurrency: int = 8):
        import openai

        self.client = openai.OpenAI(base_url=base_url, api_key=api_key, timeout=120)
        self.model = model
        self.concurrency = concurrency  # requests in flight at once (the endpoint batches them)
        self.name = f"openai:{model}@{base_url}"
        self.structured = True  # False once the endpoint refuses response_format

    def complete(self, conversations: Sequence[list[dict]], max_tokens: int,
                 json_schema: dict | None = None) -> list[str]:
        from concurrent.futures import ThreadPoolExecutor

        import openai

        def ask(messages: list[dict]):
            options = {"model": self.model, "messages": messages, "max_tokens": max_tokens, "temperature": 0.2}
            if json_schema is not None and self.structured:
                try:
                    return self.client.chat.completions.create(**options, response_format={
                        "type": "json_schema", "json_schema": {"name": "reply", "schema": json_schema, "strict": True}})
                except openai.BadRequestError as exc:
                    if "response_format" not in str(exc):
                        raise
                    self.structured = False  # asked in plain text from now on; the reply is checked either way
            return self.client.chat.completions.create(**options)

        def one(conversation: list[dict]) -> str:
            masked, mapping = [], {}  # one placeholder map for the whole conversation
            for message in conversation:
                text, mapping = pii.mask(message["content"], mapping)
                masked.append({**message, "content": text})
            reply = ask(masked)
            return pii.unmask(reply.choices[0].message.content or "", mapping).strip()

        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            return list(pool.map(one, conversations))


def passages(warehouse: Warehouse, author: str, min_words: int = 40, max_words: int = 220) -> list[Passage]:
    """The author's cleaned documents cut into passages of whole paragraphs."""
    slug = author_slug(author)
    documents, _ = clean_corpus(list(warehouse.documents(slug)))
    out: list[Passage] = []
    for doc in sorted(documents, key=lambda d: d.id):
        buffer: list[str] = []
        pieces: list[str] = []
        for paragraph in paragraphs(doc.text):
            # One paragraph over the limit (a code dump, a page with no breaks) becomes pieces of
            # max_words: a passage is what a question is written for, and it must fit the prompt.
            words = paragraph.split()
            pieces += [paragraph] if len(words) <= max_words else [
                " ".join(words[i:i + max_words]) for i in range(0, len(words), max_words)]
        for paragraph in [*pieces, None]:
            words = sum(len(p.split()) for p in buffer)
            if paragraph is None or (buffer and words + len(paragraph.split()) > max_words):
                if words >= min_words:
                    text = "\n\n".join(buffer)
                    pid = hashlib.sha256(f"{doc.id}\n{text}".encode()).hexdigest()[:16]
                    out.append(Passage(doc.id, pid, doc.doc.title, text))
                buffer = []
            if paragraph is not None:
                buffer.append(paragraph)
    return out


_QUESTION = re.compile(r"^(?:question\s*:\s*)?(.+?\?)", re.IGNORECASE | re.DOTALL)
_REPLY_OPENINGS = ("the answer", "answer:", "yes", "no,", "no.", "sure", "this passage", "the passage", "in this",
                   "here is", "here's", "i ")


def clean_instruction(reply: str) -> str | None:
    """The question in a teacher's reply (JSON ``{"question": ...}`` when it was asked through
    QUESTION_SCHEMA, else the first question in its text), or None when it wrote none."""
    text = reply.strip()
    if text.startswith("{"):
        try:
            text = str(json.loads(text).get("question") or "")
        except (ValueError, AttributeError):
            return None
    match = _QUESTION.search(text.strip().strip('"'))
    if not match:
        return None
    question = " ".join(match.group(1).split())
    return question if 12 <= len(question) <= 300 else None


def _content_words(text: str) -> set[str]:
    """Stemmed words without stop words (the keyword index's own normalisation), 3+ letters."""
    from services.retrieval.keywords import keyword_terms

    return {t for t in keyword_terms(text) if len(t) >= 3 and not t.isdigit()}


def question_problem(question: str, passage: str) -> str | None:
    """Why an instruction is not a question about the passage (None: it is one): it replies
    instead of asking, talks about "the passage" or holds a template's placeholder, or shares no
    content word with the passage."""
    lowered = question.lower()
    if lowered.startswith(_REPLY_OPENINGS) or not question.endswith("?"):
        return "a reply, not a question"
    if "passage" in lowered or "puzzle" in lowered or "[" in question or "insert" in lowered:
        return "about the passage, not its subject"
    if not _content_words(question) & _content_words(passage):
        return "shares no content word with the passage"
    return None


def split_of(doc_id: str, test_fraction: float) -> str:
    """Deterministic per document: every passage of a document lands in the same half."""
    bucket = int(hashlib.sha256(doc_id.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    return "test" if bucket < test_fraction else "train"


def dataset_key(author: str, items: Sequence[Passage], teacher: Teacher, base_model: str, test_fraction: float) -> str:
    blob = json.dumps([DATASET_VERSION, author_slug(author), [p.passage_id for p in items], teacher.name, base_model,
                       test_fraction, QUESTION_PROMPT, QUESTION_SCHEMA, prompts.TEMPLATE_VERSION])
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def write_instructions(author: str, items: Sequence[Passage], teacher: Teacher, batch_size: int = 8,
                       progress: Callable[[str, int, int], None] = lambda stage, done, total: None,
                       ) -> tuple[list[Example], dict[str, int]]:
    """A question for each passage by the teacher (through QUESTION_SCHEMA), kept when it passes
    ``question_problem`` and is not a repeat -> (examples, {why dropped: count})."""
    instructions: list[str | None] = []
    for start in range(0, len(items), batch_size):
        batch = items[start:start + batch_size]
        asks = [[{"role": "user", "content": QUESTION_PROMPT.format(author=author, title=p.title, passage=p.text)}]
                for p in batch]
        replies = teacher.complete(asks, max_tokens=80, json_schema=QUESTION_SCHEMA)
        instructions.extend(clean_instruction(r) for r in replies)
        progress("instructions", min(start + batch_size, len(items)), len(items))

    examples, seen, dropped = [], set(), {}
    for passage, instruction in zip(items, instructions, strict=True):
        problem = ("no question written" if instruction is None
                   else question_problem(instruction, f"{passage.title}\n{passage.text}"))
        key_text = re.sub(r"\W+", " ", (instruction or "").lower()).strip()
        if problem is None and key_text in seen:
            problem = "a duplicate"
        if problem is not None:
            dropped[problem] = dropped.get(problem, 0) + 1
            continue
        seen.add(key_text)
        examples.append(Example(passage.doc_id, passage.passage_id, instruction, passage.text))
    return examples, dropped


def build(author: str, warehouse: Warehouse, artifact_uri: str, teacher: Teacher, base: LocalTeacher, *,
          test_fraction: float = 0.2, max_examples: int = 2000, batch_size: int = 8, rejected_max_tokens: int = 160,
          progress: Callable[[str, int, int], None] = lambda stage, done, total: None) -> dict:
    """Build (or reuse) the dataset; returns its manifest (with ``path``)."""
    items = passages(warehouse, author)[:max_examples]
    if not items:
        raise ValueError(f"no passages of {author!r} in the warehouse: crawl their writing first (twin crawl ...)")
    key = dataset_key(author, items, teacher, base.name, test_fraction)
    path = f"{artifact_uri.rstrip('/')}/datasets/{author_slug(author)}/{key}"
    fs, root = fsspec.core.url_to_fs(path)
    if fs.exists(f"{root}/manifest.json"):
        with fs.open(f"{root}/manifest.json") as f:
            return {**json.load(f), "path": path, "reused": True}

    examples, dropped = write_instructions(author, items, teacher, batch_size, progress)
    if len(examples) < 2:
        raise ValueError(f"only {len(examples)} usable instructions from {len(items)} passages: use a stronger "
                         "teacher (TWIN_TEACHER_URL) or add more of the author's writing")

    train = [e for e in examples if split_of(e.doc_id, test_fraction) == "train"]
    test = [e for e in examples if split_of(e.doc_id, test_fraction) == "test"]
    if not test and len({e.doc_id for e in examples}) > 1:  # tiny corpora: still hold a document out
        held = sorted({e.doc_id for e in examples})[0]
        test = [e for e in examples if e.doc_id == held]
        train = [e for e in examples if e.doc_id != held]

    rejected: list[str] = []
    for start in range(0, len(train), batch_size):
        batch = train[start:start + batch_size]
        rejected.extend(base.complete([prompts.chat_messages(author, [{"role": "user", "content": e.instruction}])
                                       for e in batch], max_tokens=rejected_max_tokens))
        progress("rejected answers", min(start + batch_size, len(train)), len(train))
    preference = [{**asdict(e), "chosen": e.answer, "rejected": r} for e, r in zip(train, rejected, strict=True)
                  if r and r.strip() != e.answer.strip()]

    files = {"train.jsonl": [asdict(e) for e in train], "test.jsonl": [asdict(e) for e in test],
             "preference.jsonl": preference}
    digest = hashlib.sha256()
    fs.makedirs(root, exist_ok=True)
    for name, rows in files.items():
        body = "".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in rows)
        digest.update(name.encode() + body.encode())
        with fs.open(f"{root}/{name}", "w") as f:
            f.write(body)
    manifest = {"version": DATASET_VERSION, "author": author, "key": key, "digest": digest.hexdigest(),
                "counts": {"passages": len(items), "train": len(train), "test": len(test),
                           "preference": len(preference), "dropped": len(items) - len(examples)},
                "dropped": dict(sorted(dropped.items())),
                "documents": {"train": sorted({e.doc_id for e in train}), "test": sorted({e.doc_id for e in test})},
                "generator": {"teacher": teacher.name, "base": base.name, "question_prompt": QUESTION_PROMPT,
                              "template_version": prompts.TEMPLATE_VERSION, "test_fraction": test_fraction}}
    # The manifest goes last: its presence marks a complete dataset (an interrupted build is redone).
    with fs.open(f"{root}/manifest.json", "w") as f:
        json.dump(manifest, f, indent=2, sort_keys=True)
    return {**manifest, "path": path, "reused": False}


def load(path: str, name: str) -> list[dict]:
    fs, root = fsspec.core.url_to_fs(path)
    with fs.open(f"{root}/{name}") as f:
        return [json.loads(line) for line in f.read().decode().splitlines() if line.strip()]
