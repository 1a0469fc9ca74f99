"""vLLM plumbing shared by the engines that serve Step1 checkpoints (chat ``vllm``, tts ``step-audio``).

``checkpoint`` validates settings against a Step1 checkpoint before anything heavy starts (pure Python, testable
without vLLM); ``runtime`` builds the engine arguments, starts and stops ``AsyncLLM`` and streams one request with
abort-on-close (imports vLLM: only in .venv-vllm). Stages import this package, never each other.
"""
