"""RAG chat: retrieve from the twin's own writing, frame it with the one prompt template,
generate, and hand back the answer with the sources it was given.

No gRPC, Ray or HTTP: the retriever and the generator are passed in (small async interfaces the
Serve gateway implements over deployment handles, and tests over local objects).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Protocol

from llm_twin import prompts
from llm_twin.documents import author_slug
from services.generation.api import Delta, SamplingParams
from services.retrieval.query import asking_clause, contextual_query, points_back, with_topic

from .errors import InvalidChatRequest

MAX_TOP_K = 20


class SourceSearch(Protocol):
    async def answer_search(self, query: str, question: str, twin: str, top_k: int, opening: str | None = None):
        """-> retrieval.core.Retrieval: results, evidence, calibrated relevance (or None);
        ``opening``: the words before ``query`` when it is a longer question's asking clause."""


class TextStream(Protocol):
    def stream(self, messages: list[dict], params: SamplingParams, twin: str | None = None,
               whole: bool = False) -> AsyncIterator[Delta]:
        """``twin``: the twin's id, whose fine-tuned adapter answers when one is registered;
        ``whole``: the answer is awaited whole (not streamed), so few messages need to travel."""


@dataclass(frozen=True)
class Sources:
    """First event of a chat stream: the passages the answer is given (possibly none)."""

    items: list


class Chat:
    def __init__(self, retriever: SourceSearch, generator: TextStream, *, top_k: int = 4,
                 min_similarity: float = 0.25, min_relevance: float = 0.5, min_follow_up_similarity: float = 0.15,
                 max_other_twin_lead: float | None = 0.12, min_asking_lead: float | None = -0.15):
        self.retriever = retriever
        self.generator = generator
        self.top_k = top_k
        self.min_similarity = min_similarity
        self.min_relevance = min_relevance
        self.min_follow_up_similarity = min_follow_up_similarity
        self.max_other_twin_lead = max_other_twin_lead
        self.min_asking_lead = min_asking_lead

    def answers(self, found) -> bool:
        """Does the twin's writing cover the question? The calibrated probability against
        ``min_relevance``; without a calibration for the embedder, the best passage's similarity
        against ``min_similarity``. Either way, not when another twin's writing is clearly closer
        to the question than this twin's (``max_other_twin_lead``): the relevance signals read this
        twin's passages only, and an author who wrote near a topic ("attention" in a post on
        transformers) is carried over the line by a colleague's article on it (docs/evaluation.md)."""
        lead = found.other_twin_lead
        if lead is not None and self.max_other_twin_lead is not None and lead >= self.max_other_twin_lead:
            return False
        if found.relevance is not None:
            return found.relevance >= self.min_relevance
        return any(r.similarity >= self.min_similarity for r in found.results)

    async def find_sources(self, twin: str, conversation: Sequence[dict], top_k: int | None = None):
        """-> (the Retrieval decided on, whether it answers). A question that the decision
        declines on its own is tried once more with the question it follows in front (a follow-up
        with no word pointing back); that answers only when the question's own words are also
        close to what the earlier topic found (``min_follow_up_similarity``): with the topic in
        front, any question finds the topic's passages ("What's the capital of Australia?" after a
        question on feature flags), so the search's evidence alone cannot tell.

        A question asked after an opening about the asker, declined as a whole, is decided on its
        asking clause (``asking_answers``)."""
        query, top_k = self.question(twin, conversation, top_k)
        own = str(conversation[-1]["content"]).strip()
        found = await self.retriever.answer_search(query, own, twin=twin, top_k=top_k)
        # A short question searched with the topic in front only for being short ("What's the
        # capital of Australia?") gets the same check as the retry below; one that points back
        # ("Why does that matter?") cannot: its own words mean little without the topic.
        if self.answers(found) and (points_back(own) or self.follows_on(found)):
            return found, True
        joined = with_topic(conversation)
        if joined and joined != query:
            retried = await self.retriever.answer_search(joined, own, twin=twin, top_k=top_k)
            if self.answers(retried) and self.follows_on(retried):
                return retried, True
        asked = await self.asking_answers(twin, own, top_k)
        if asked is not None:
            return asked, True
        return found, False

    async def asking_answers(self, twin: str, own: str, top_k: int):
        """The search of the question's asking clause, when that answers; else None.

        The words an asker opens with ("We sell second-hand furniture online and have 50,000 product
        descriptions; how should we split them into chunks for retrieval?") are part of the question
        whose coverage the decision weighs, so a question on the author's topic was declined for
        not being about furniture. Decided on the asking clause alone, a question whose opening holds
        the topic ("We run YOLO object detection on drones; how can we speed up training?") would
        be answered instead; the two differ in where the question's meaning sits: the whole
        question's embedding is near its asking clause in the first (cosine lead -0.09 over the
        opening) and near its opening in the second (-0.33). ``min_asking_lead`` draws the line
        (docs/evaluation.md has the figures)."""
        split = asking_clause(own) if self.min_asking_lead is not None else None
        if split is None:
            return None
        opening, ask = split
        asked = await self.retriever.answer_search(ask, ask, twin=twin, top_k=top_k, opening=opening)
        lead = asked.asking_lead
        if self.answers(asked) and lead is not None and lead >= self.min_asking_lead:
            return asked
        return None

    def follows_on(self, found) -> bool:
        """Is the question itself about the passage found with the topic in front?"""
        own = found.question_similarity
        return own is None or own >= self.min_follow_up_similarity

    def sources(self, found, answers: bool) -> list:
        """The passages an answer is given: those similar enough, and the best one at least."""
        if not answers:
            return []
        return [r for n, r in enumerate(found.results) if n == 0 or r.similarity >= self.min_similarity]

    def question(self, twin: str, conversation: Sequence[dict], top_k: int | None) -> tuple[str, int]:
        """-> (the text to search with, sources to retrieve); raises InvalidChatRequest."""
        if not (twin or "").strip():
            raise InvalidChatRequest("name the twin to chat with (the model id; see /v1/models or ListTwins)")
        if not conversation:
            raise InvalidChatRequest("messages is empty: send at least one user message")
        last = conversation[-1]
        if last.get("role") != "user" or not str(last.get("content") or "").strip():
            raise InvalidChatRequest("the last message must be the user's question, and not empty")
        top_k = self.top_k if top_k is None else top_k
        if not 1 <= top_k <= MAX_TOP_K:
            raise InvalidChatRequest(f"sources_top_k (sources to retrieve; top_k over gRPC) must be between 1 and "
                                     f"{MAX_TOP_K}, got {top_k}")
        # A follow-up ("how would I deploy that?") is searched with the question it follows.
        return contextual_query(conversation) or str(last["content"]).strip(), top_k

    async def stream(self, twin: str, conversation: Sequence[dict], params: SamplingParams,
                     top_k: int | None = None, whole: bool = False) -> AsyncIterator[Sources | Delta]:
        """Yields Sources once, then Deltas; the last Delta has finish_reason ('no_sources' when
        nothing the twin wrote is relevant: then it says so instead of inventing an answer)."""
        found, answers = await self.find_sources(twin, conversation, top_k)
        relevant = self.sources(found, answers)
        yield Sources(relevant)
        if not relevant:
            for index in range(params.n):  # every choice says so
                yield Delta(prompts.NO_SOURCES_ANSWER, "no_sources", index=index)
            return
        passages = [prompts.Passage(r.title, r.text, r.link) for r in relevant]
        messages = prompts.chat_messages(relevant[0].author, conversation, passages)
        async for delta in self.generator.stream(messages, params, twin=author_slug(twin), whole=whole):
            yield delta
