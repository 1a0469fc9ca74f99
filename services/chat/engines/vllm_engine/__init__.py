"""The ``vllm`` chat engine: Step-Audio-Chat (Step1ForCausalLM) on vLLM's AsyncLLM.

``checkpoint`` validates settings against the checkpoint before anything heavy starts (pure Python, testable without
vLLM); ``engine`` holds the AsyncLLM adapter and imports vLLM (only in .venv-vllm).
"""
