"""What every model of the platform trains with: one Accelerate loop (:mod:`~lmindexer.training.loop`) and resumable
checkpoints as safetensors + JSON (:mod:`~lmindexer.training.checkpoint`).

The LMIndexer (:mod:`lmindexer.indexers.lm.training`) and the generative retriever/recommender
(:mod:`lmindexer.downstream.generative`) both train through it, so both run on a CPU, one GPU or several processes
under ``accelerate launch`` with the same code, and both resume mid-run after a kill.
"""
