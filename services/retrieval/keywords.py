"""Text normalisation for keyword (BM25) search: lowercase, stop words out, English stems.

Applied to what is indexed and to every query alike, so "pipelines" finds "pipeline".
"""

from __future__ import annotations

import re
from functools import lru_cache

import snowballstemmer

WORD = re.compile(r"[^\W_]+", re.UNICODE)
STOP_WORDS = frozenset(["a", "about", "above", "after", "again", "against", "all", "am", "an", "and", "any", "are",
                        "as", "at", "be", "because", "been", "before", "being", "below", "between", "both", "but",
                        "by", "can", "could", "did", "do", "does", "doing", "down", "during", "each", "few", "for",
                        "from", "further", "had", "has", "have", "having", "he", "her", "here", "hers", "herself",
                        "him", "himself", "his", "how", "i", "if", "in", "into", "is", "it", "its", "itself", "just",
                        "me", "more", "most", "my", "myself", "no", "nor", "not", "now", "of", "off", "on", "once",
                        "only", "or", "other", "our", "ours", "ourselves", "out", "over", "own", "same", "she",
                        "should", "so", "some", "such", "than", "that", "the", "their", "theirs", "them",
                        "themselves", "then", "there", "these", "they", "this", "those", "through", "to", "too",
                        "under", "until", "up", "very", "was", "we", "were", "what", "when", "where", "which",
                        "while", "who", "whom", "why", "will", "with", "would", "you", "your", "yours", "yourself",
                        "yourselves", "s", "t", "don", "doesn", "didn", "isn", "aren", "wasn", "weren", "won",
                        "wouldn", "shouldn", "couldn"])
_stemmer = snowballstemmer.stemmer("english")


@lru_cache(maxsize=65536)
def stem(word: str) -> str:
    return _stemmer.stemWord(word)


def keyword_terms(text: str) -> list[str]:
    return [stem(w) for w in (m.lower() for m in WORD.findall(text)) if w not in STOP_WORDS]


def keyword_text(text: str) -> str:
    return " ".join(keyword_terms(text))


# Words that frame a question put to the twin itself ("What's your take on ...", "Have you ever
# written about ...", "I'd love to hear your view on ...") rather than name its topic. They are
# in no passage, so counted as the question's own words they read as a topic the writing does not
# cover. Only dropped from a question that addresses the twin (you / your), where they are frame.
_ADDRESS = frozenset(["you", "your", "yours", "yourself"])
FRAME_WORDS = frozenset(stem(w) for w in [
    "think", "thought", "thoughts", "opinion", "opinions", "view", "views", "take", "write", "written", "wrote",
    "ever", "explain", "explained", "tell", "know", "cover", "covered", "say", "said", "hear", "love", "like",
    "anything", "something", "share", "talk", "talked", "mention", "mentioned"])


_CONTRACTIONS = frozenset(["d", "ll", "m", "re", "ve"])  # "I'd", "you'll", "I'm", "you're", "I've"


def topic_terms(question: str) -> list[str]:
    """The question's keyword terms without the words that frame it as put to the twin (and the
    tails of contractions, which name nothing)."""
    terms = [t for t in keyword_terms(question) if t not in _CONTRACTIONS]
    if _ADDRESS.isdisjoint(m.lower() for m in WORD.findall(question)):
        return terms
    return [t for t in terms if t not in FRAME_WORDS]
