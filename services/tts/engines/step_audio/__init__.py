"""The ``step-audio`` TTS engine: Step-Audio-TTS-3B (Step1 speech-token LM) on vLLM + the CosyVoice decoder.

``prompt`` (the reference prompt as ids) and ``repetition`` (the reference's repetition rule) are pure and testable
without vLLM; ``logits`` (the rule as a vLLM logits processor) and ``engine`` import vLLM (.venv-vllm only).
"""
