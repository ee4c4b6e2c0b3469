"""Writes tests/data/handbook_questions_hard.jsonl (development) and _heldout.jsonl (held out).

Each question: (kind, question, author, evidence, conversation). The evidence is a short phrase of
the answer's passage; the gold links are every handbook article that contains it (copies of one
article on Medium and Substack, and newsletter sections repeated across issues, included), matched
after Unicode NFKC and without markdown emphasis. A list of article indexes stands in where the
answer is a whole article. Needs ../shared/corpus/llm-engineers-handbook.
"""
# (kind, question, author, evidence or [doc indexes], conversation)
DEV = [
("paraphrase","What is the quickest way to walk through the records of a dataframe one at a time?",None,"1900 times faster",None),
("paraphrase","How do I stop a chat model from declining harmful requests without retraining it?",None,"refusal direction",None),
("paraphrase","How can I squeeze weights down to 4 bits using second-order information about the error?",None,"OBQ method",None),
("paraphrase","How does a language model choose each next word when it writes, other than always taking the likeliest one?",None,[13,56],None),
("paraphrase","How should I split money between advertising channels when returns diminish?",None,"Introduction to CVXPY",None),
("paraphrase","How can an agent learn to mine precious stones in a block-building video game?",None,"MineRL",None),
("paraphrase","How do I solve puzzles in Python where rules must hold rather than a number being maximised?",None,"satisfiability problem",None),
("paraphrase","Which graph network design is as discriminative as the isomorphism test?",None,"Weisfeiler-Lehman (WL) graph isomorphism test",None),
("paraphrase","How do recommendation systems with billions of nodes sample neighbours to train graph networks?",None,"UberEats",None),
("paraphrase","How can neighbouring nodes be weighted differently when aggregating messages in a graph?",None,"Gatv2Conv",None),
("paraphrase","What changes when decision variables must be whole numbers instead of continuous values?",None,"Boolean variables to represent decisions",None),
("paraphrase","How do I teach an agent to reach a goal on a slippery grid with a table of values?",None,"Q-learning update formula",None),
("paraphrase","What should a software developer read and watch to get into machine learning?",None,"educational entertainment",None),
("paraphrase","Why are multi-dimensional arrays of deep learning frameworks faster than NumPy's?",None,"2.8 times faster",None),
("paraphrase","How do I combine several specialised models into one with a router that picks among them?",None,"num_local_experts",None),
("paraphrase","How do I align a 7B model with pairs of preferred and rejected answers instead of a reward model?",None,"two models are required",None),
("paraphrase","Which library runs models quantised with a mix of bits per weight fastest on consumer GPUs?",None,"target average number of bits per weight",None),
("paraphrase","How can I describe my cloud resources in a normal programming language instead of YAML?",None,"Pulumi lets you write code",None),
("paraphrase","How did a deep learning inference service get most of its latency back without an optimising compiler?",None,"memory transfer & processing speeds",None),
("paraphrase","How do I build an assistant that calls Python functions step by step until it can answer?",None,"StepOutput",None),
("deep","What context length does the Llama 3.1 Unsloth tutorial set instead of the supported 128k?",None,"set it to 2,048",None),
("deep","Roughly how many instructions did the AgentInstruct pipeline generate?",None,"22 million instructions",None),
("deep","Which benchmark did the abliterated model fail to improve on after preference tuning?",None,"GSM8K, a math dataset",None),
("deep","Which llama.cpp quantization versions drastically decrease model performance?",None,"recommend Q2 or Q3",None),
("deep","How many possible solutions are there with a capacity of 1000 in the beer knapsack problem?",None,"8,080,104",None),
("deep","What is the name of the linear programming solver that ships with OR-Tools?",None,"Google Linear Optimization Package",None),
("deep","By how much does a stateless optimizer such as SGD cut the optimizer's parameters?",None,"reduce the number of parameters by 2/3",None),
("deep","Why did the real-time feature pipeline switch its vector database from Qdrant to Redis?",None,"didn’t support Qdrant",None),
("deep","Which environment variable makes CUDA number the GPUs by their PCI bus?",None,"PCI_BUS_ID",None),
("deep","What share of the values are outliers in LLM.int8()?",None,"outliers represent about 0.1%",None),
("deep","What probabilities did greedy search give to the tokens 'being' and 'doctor'?",None,"9.68% and 2.86%",None),
("deep","How many actions per second does MineRL process?",None,"20 actions processed per second",None),
("deep","What return does the best marketing budget allocation reach?",None,"224,540.1500",None),
("deep","Which GAT layer did Brody et al. find consistently better than the original?",None,"Gatv2Conv` consistently outperforms",None),
("deep","What does the read-only Lambda execution environment complicate for the crawler?",None,"Lambda execution environment is read-only",None),
("deep","How many vector DB solutions were there at the time of the monthly learning recommendations?",None,"37 vector DB solutions",None),
("deep","Which small CPU-friendly embedding model outputting 384 dimensions filled the vector DB in the streaming pipeline?",None,"outputs a 384 embedding",None),
("deep","From what model size is chain-of-thought prompting worth it?",None,"more than 50B parameters",None),
("deep","How can you read the retry statistics of a function wrapped with tenacity?",None,"retry.statistics",None),
("deep","What does zero-point quantization cost compared to absmax?",None,"slightly better than absmax",None),
("author","What has Maxime Labonne written about the Weisfeiler-Lehman test?",None,"Weisfeiler-Lehman (WL) graph isomorphism test",None),
("author","According to Paul Iusztin, why is Bytewax a good fit for the feature pipeline?",None,"Bytewax is a streaming engine built in Rust",None),
("author","What did Maxime write about storing multi-turn conversations?",None,"ShareGPT is ideal for storing multi-turn",None),
("author","How does Maxime Labonne describe the pooling aggregator?",None,"pooling aggregator",None),
("author","What does Paul recommend for a first deployment, batch or real-time?",None,"batch mode architecture will be your best shot",None),
("author","How does Paul Iusztin use GPT-4 as a reranker?",None,"GPT-4 + prompt engineering as our reranker",None),
("author","Maxime Labonne on zero-point versus absmax quantization",None,"zero-point quantization should be slightly better",None),
("author","What does Paul Iusztin say about the walrus operator?",None,"walrus operator do",None),
("author","Which wrapper did Maxime make to simplify model merging?",None,"LazyMergekit, a wrapper I made",None),
("author","Paul Iusztin: how is the LLM microservice deployed in the inference pipeline?",None,"LLM microservice is deployed on Qwak",None),
("follow-up","Which of those levels should I avoid?",None,"recommend Q2 or Q3",[("user","How do I quantize Llama models with llama.cpp?"),("assistant","You convert the weights to GGML and pick a quantization method such as q4_k_m.")]),
("follow-up","Which companies use it in production?",None,"UberEats",[("user","What is GraphSAGE?"),("assistant","A graph neural network that samples neighbours so it scales to very large graphs.")]),
("follow-up","Does it hurt the model, and how do you recover the lost quality?",None,[2],[("user","Tell me about abliteration."),("assistant","It removes the refusal direction from the model's residual stream.")]),
("follow-up","How does it compare to Terraform?",None,"Pulumi lets you write code",[("user","What is Pulumi?"),("assistant","An infrastructure as code tool.")]),
("follow-up","What does the model registry do in it?",None,"model registry will store, version, track, and share",[("user","What is the FTI architecture?"),("assistant","Feature, training and inference pipelines that talk through a feature store and a model registry.")]),
("follow-up","Why do you need a second model for that?",None,"two models are required",[("user","How do I fine-tune Mistral-7B with DPO?"),("assistant","You build a preference dataset and train with TRL's DPOTrainer.")]),
("follow-up","What does the act order option do there?",None,"decreasing activation",[("user","What is GPTQ?"),("assistant","A post-training 4-bit quantization algorithm.")]),
("follow-up","Which one wins and by how much?",None,"1900 times faster",[("user","How do I iterate over rows in pandas?"),("assistant","There are several ways: iterrows, itertuples, apply and vectorised operations.")]),
("follow-up","How is the self-query used to filter the results?",None,"author_id** as an exact field",[("user","What are the 4 advanced RAG algorithms?"),("assistant","Query expansion, self-query, hybrid and filtered vector search, and reranking.")]),
("follow-up","And how does the nucleus variant decide how many tokens to keep?",None,"until the total probability surpasses the threshold",[("user","Explain top-k sampling."),("assistant","It samples the next token among the k most likely ones.")]),
("follow-up","How would I add retries to those calls?",None,"Retry policies are a must",[("user","How do I add real-time monitoring and metrics to my ML system?"),("assistant","Compute metrics as soon as ground truth arrives and deploy it on a serverless platform.")]),
("follow-up","What does the offloading one mean?",None,"parameters that do not fit on your GPU's VRAM are loaded on the CPU",[("user","What are the tips to reduce VRAM when training LLMs?"),("assistant","Mixed precision, lower precision, smaller batches, gradient accumulation, stateless optimizers, checkpointing and offloading.")]),
]
HELDOUT = [
("paraphrase","How can I train my own coding assistant by editing a config file for Axolotl?",None,"create our own **Code Llama** model",None),
("paraphrase","How do I build a graph network that classifies members of a club that split in two?",None,"Zachary’s karate club dataset embodies",None),
("paraphrase","How can I adapt a Llama 2 chat model for free in a hosted notebook?",None,"timdettmers/openassistant-guanaco",None),
("paraphrase","What does it mean to turn 32-bit floats into 8-bit integers, and what methods exist?",None,"map an FP32 tensor",None),
("paraphrase","How can a solver find the cheapest army that beats an enemy's power?",None,"our enemy cannot find a better army composition",None),
("paraphrase","Why should training settings live in typed classes loaded from YAML?",None,"I prefer YAML files as they are easier to read",None),
("paraphrase","How can one model check another's answers with a yes or no?",None,"The LLM has to give a \"yes\" or \"no\" answer",None),
("paraphrase","What does a machine learning platform need at its core?",None,"central nervous system",None),
("paraphrase","How do I send customer questions to billing or technical support with prompts?",None,"redirect it to billing, technical support",None),
("paraphrase","Why do people say computer science is dead, and what should you learn instead?",None,"Computer science is dead",None),
("deep","Over how many actions does the Minecraft bot's network output a probability distribution?",None,"set of 7 actions",None),
("deep","How long did the greedy algorithm need for its million iterations in the budget problem?",None,"took a considerable 30 seconds",None),
("deep","What happens to Q-values when the learning rate is 1?",None,"changes extremely fast",None),
("deep","Which function handles the modulo operator in CP-SAT?",None,"AddModuloEquality",None),
("deep","How many pages does Wikipedia's tensor category hold?",None,"over 100 pages",None),
("deep","What accuracy did the graph attention network reach against the GCN?",None,"70.00%",None),
("deep","Which model was picked as the base of the mixture of experts for its MMLU and GSM8K scores?",None,"I chose mlabonne/NeuralDaredevil-7B",None),
("deep","Which mergekit-yaml flag copies the tokenizer into the merge?",None,"--copy-tokenizer",None),
("deep","What do the train/rewards/chosen and rejected curves show during DPO?",None,"train/rewards/chosen",None),
("deep","Which log line confirms that llama.cpp offloaded every layer to the GPU?",None,"offloaded 35/35 layers",None),
("deep","Which ExLlamaV2 conversion argument gives the path of the base model?",None,"Path of the base model to convert",None),
("deep","Which floating point format developed by Google is the key to lower training memory?",None,"Brain Floating Point",None),
("deep","How many ML developers read Pau Labarta Bajo's weekly newsletter?",None,"8k+ ML developers",None),
("deep","What does the scheduler send to each crawler lambda?",None,"sending the page name and link",None),
("deep","Which class computes the projected embeddings of the whole vector space once?",None,"computes the projected embeddings for the entire vector space once",None),
("deep","What is the Hugging Face library list used to fine-tune Llama 2 in Colab?",None,"`accelerate`, `peft`, `trl`, and `bitsandbytes`",None),
("author","What does Maxime Labonne say about catastrophic forgetting with full fine-tuning?",None,"catastrophic forgetting of previous skills",None),
("author","Why did Paul Iusztin pick Qdrant as the vector DB?",None,"why we picked Qdrant",None),
("author","Maxime's explanation of the epsilon parameter in GIN",None,"determines the **importance of the target node**",None),
("author","What did Paul Iusztin write about Change Data Capture for the feature pipeline?",None,"Change Data Capture (CDC) pattern",None),
("author","How does Arena Learning refine datasets, according to Maxime Labonne?",None,"simulated battles between models",None),
("author","According to Paul, what is the secret sauce in MLOps?",None,"secret sauce in MLOps",None),
("follow-up","Why not use the cross-encoder from the start?",None,"The answer, in a word, is speed",[("user","How do you build a real-time retrieval system on LinkedIn posts?"),("assistant","Stream the posts into a vector DB, retrieve with cosine similarity and rerank the candidates.")]),
("follow-up","What happens if that rate is zero?",None,"never changes",[("user","What is the Q-learning update formula?"),("assistant","Q(s,a) moves toward the reward plus the discounted best next value, by a learning rate alpha.")]),
("follow-up","How much memory does that save?",None,"reduces the memory footprint of the LLM by almost 2x",[("user","How does LLM.int8() work?"),("assistant","It keeps outlier features in FP16 and quantizes the rest to int8.")]),
("follow-up","What AWS resources do its steps create?",None,"an ECR as your Docker registry",[("user","What is the ultimate MLOps tool?"),("assistant","Infrastructure as code for your AWS projects.")]),
("follow-up","How do you know when each of them finished?",None,"correlation IDs have finished",[("user","How do I crawl LinkedIn and Medium for my LLM twin?"),("assistant","Run Selenium crawlers inside AWS Lambda functions triggered by a scheduler.")]),
("follow-up","Do the two make the same mistakes?",None,"different mistakes",[("user","How does GIN compare with a GCN?"),("assistant","GIN is more discriminative and reaches a higher accuracy.")]),
("follow-up","How many examples does its prompt ask for?",None,"Generate 100 more examples",[("user","How can I generate a Q&A dataset for fine-tuning in under 30 minutes?"),("assistant","Use a teacher LLM with a few hand-written examples.")]),
("follow-up","What does the RL step optimise there?",None,"generate prompts with higher rewards",[("user","What is RLHF?"),("assistant","Reinforcement learning from human feedback.")]),
]
import json  # noqa: E401,E402
import re
import sys
import unicodedata
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
d = json.loads((ROOT.parent / 'shared/corpus/llm-engineers-handbook/ArticleDocument.json').read_text())
norm = lambda s: re.sub(r"\s+", " ", re.sub(r"[*_`]", "", unicodedata.normalize("NFKC", s))).lower()
texts = [norm(a['content']['Content']) for a in d]
def write(rows, path):
    out = []
    for kind, q, author, ev, conv in rows:
        if isinstance(ev, list):
            docs = ev
        else:
            docs = [i for i, t in enumerate(texts) if norm(ev) in t]
            if not docs: sys.exit(f"evidence not found: {ev!r}")
        rec = {"question": q, "author": author, "kind": kind, "gold_links": [d[i]['link'] for i in docs]}
        if conv: rec["conversation"] = [{"role": r, "content": c} for r, c in conv]
        out.append(json.dumps(rec, ensure_ascii=False))
        if len(docs) > 3: print("many docs", q, docs)
    open(path, "w").write("\n".join(out) + "\n")
    print(path, len(out))
write(DEV, ROOT / "tests/data/handbook_questions_hard.jsonl")
write(HELDOUT, ROOT / "tests/data/handbook_questions_heldout.jsonl")
