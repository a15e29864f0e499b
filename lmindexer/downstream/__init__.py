"""What semantic IDs are for: generative retrieval and recommendation decoded under a prefix trie of existing IDs.

- :mod:`.trie`: the prefix trie of the IDs that exist; items can be inserted and removed while serving.
- :mod:`.vocabulary`: how a semantic ID becomes one token per position.
- :mod:`.model`: the seq2seq model (text or item history -> ID tokens) and its constrained beam search.
- :mod:`.training`: fine-tuning it from an LMIndexer snapshot (or a plain backbone for baseline IDs).
- :mod:`.ranking`: Recall/NDCG/MRR; :mod:`.baselines`: BM25, dense retrieval and popularity.
- :mod:`.fusion`: hybrid rankings: score fusion, reciprocal rank fusion, and the text score boosted by predicted ID
  prefixes.
- :mod:`.jobs`: the retriever refresh (plan, train, evaluate, gate, promote or sync) the DAG and the CLI run;
  :mod:`.results`: the typed records its steps hand each other.
"""
