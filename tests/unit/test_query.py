"""Query understanding: follow-ups read in context, authors named in the question become filters, a
question after an opening splits at its asking clause."""

import pytest

from services.retrieval.query import asking_clause, contextual_query, is_follow_up, self_query

AUTHORS = [("maxime-labonne", "Maxime Labonne"), ("paul-iusztin", "Paul Iusztin"), ("paul-smith", "Paul Smith")]


def chat(*turns):
    return [{"role": "user" if i % 2 == 0 else "assistant", "content": t} for i, t in enumerate(turns)]


def test_follow_up_is_searched_with_the_question_it_follows():
    messages = chat("How do I quantize Llama models with llama.cpp?", "Convert to GGUF, pick a method.",
                    "Which of those levels should I avoid?")
    assert contextual_query(messages) == ("How do I quantize Llama models with llama.cpp? "
                                          "Which of those levels should I avoid?")


def test_a_question_that_stands_alone_is_searched_alone():
    messages = chat("How do I quantize Llama models with llama.cpp?", "Convert to GGUF.",
                    "How does GraphSAGE sample neighbours in large graphs?")
    assert contextual_query(messages) == "How does GraphSAGE sample neighbours in large graphs?"


def test_a_chain_of_follow_ups_keeps_the_topic_of_the_first_question():
    messages = chat("What is GraphSAGE?", "A GNN.", "Who uses it?", "Pinterest.", "And why does that scale?")
    assert contextual_query(messages).startswith("What is GraphSAGE?")
    assert contextual_query(messages).endswith("And why does that scale?")


def test_follow_up_signals():
    assert is_follow_up("and in production?")
    assert is_follow_up("Why not use it from the start?")
    assert not is_follow_up("How does the Weisfeiler-Lehman test relate to graph isomorphism networks?")
    assert contextual_query([]) == ""


def test_self_query_reads_an_author_and_drops_the_name():
    plan = self_query("What has Maxime Labonne written about model merging?", AUTHORS)
    assert plan.author == "maxime-labonne"
    assert "Maxime" not in plan.query and "model merging" in plan.query


def test_self_query_takes_a_unique_first_name_or_possessive():
    assert self_query("What is Maxime's view on abliteration?", AUTHORS).author == "maxime-labonne"
    assert self_query("According to Iusztin, why stream?", AUTHORS).author == "paul-iusztin"


def test_self_query_never_invents_or_guesses():
    assert self_query("What does Paul say about Bytewax?", AUTHORS).author is None  # two Pauls: no guess
    assert self_query("What does Andrej Karpathy say about tokenizers?", AUTHORS).author is None
    assert self_query("What does maxime say about merging?", AUTHORS).author is None  # lower case: not a name
    both = self_query("Compare Maxime Labonne and Paul Iusztin on RAG", AUTHORS)
    assert both.author is None and both.query == "Compare Maxime Labonne and Paul Iusztin on RAG"


def test_self_query_reads_the_code_category():
    assert self_query("How do you retry API calls in your code?", AUTHORS).category == "code"
    assert self_query("How do you retry API calls?", AUTHORS).category is None


@pytest.mark.parametrize(("question", "split"), [
    ("We sell furniture online; how should we split product descriptions into chunks?",
     ("We sell furniture online;", "how should we split product descriptions into chunks?")),
    ("Jonas from Berlin here: what does the temperature do when sampling tokens?",
     ("Jonas from Berlin here:", "what does the temperature do when sampling tokens?")),
    ("I'm a nurse who codes on weekends. What does quantizing a model's weights to 8 bits do?",
     ("I'm a nurse who codes on weekends.", "What does quantizing a model's weights to 8 bits do?")),
    ("My daughter loves Minecraft, so how would you train an agent to find diamonds?",
     ("My daughter loves Minecraft,", "how would you train an agent to find diamonds?")),
    # the last mark followed by a word that asks
    ("I'm Ana, I run a Discord bot; how do I make sampling less repetitive?",
     ("I'm Ana, I run a Discord bot;", "how do I make sampling less repetitive?")),
    # a comma in a list is not followed by a word that asks
    ("How should I split an ML system into feature, training and inference pipelines?", None),
    ("What is LoRA?", None),
    ("Hi: how does GPTQ work?", None),                 # an opening of one word
    ("We use Kafka; how do we fix it?", ("We use Kafka;", "how do we fix it?")),
    ("At our Lagos office we stream posts all day - how would you build a streaming pipeline?",  # a dash
     ("At our Lagos office we stream posts all day", "how would you build a streaming pipeline?")),
    ("How do I tune a LoRA-based fine-tune?", None),  # a hyphen inside a word is not a dash
    ("We use Kafka; how is it?", None),               # an asking clause with no content word
])
def test_the_asking_clause_of_a_question_after_an_opening(question, split):
    assert asking_clause(question) == split
