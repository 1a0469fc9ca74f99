"""The ``step-audio`` tokenizer engine (Step-Audio-Tokenizer: vq02 Paraformer + k-means, vq06 ONNX).

Modules: ``layout`` (directory layout and check), ``preprocess``, ``logmel``, ``vq02``, ``vq06``,
``interleave``, ``engine``; ``check`` is the command-line check of a models directory. Heavy
imports (torch, funasr, onnxruntime) happen only in the modules that need them.
"""
