"""The repetition-aware rule as a vLLM v1 logits processor (imports vLLM: .venv-vllm only).

vLLM v1 has no per-request logits processors: this class is registered on the engine
(``AsyncEngineArgs(logits_processors=[PROCESSOR])``, instantiated in the engine core) and acts only on requests
whose ``SamplingParams.extra_args`` carry ``{EXTRA_ARG: True}``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from vllm import SamplingParams
from vllm.v1.sample.logits_processor import AdapterLogitsProcessor

from services.tts.engines.step_audio.repetition import banned_id

EXTRA_ARG = "step_audio_repetition_aware"
PROCESSOR = f"{__name__}:RepetitionAwareLogitsProcessor"


class RepetitionAwareLogitsProcessor(AdapterLogitsProcessor):
    def is_argmax_invariant(self) -> bool:
        return False  # it bans the most likely id whenever that id is the repeating one

    def new_req_logits_processor(
        self, params: SamplingParams
    ) -> Callable[[list[int], list[int], torch.Tensor], torch.Tensor] | None:
        if not (params.extra_args or {}).get(EXTRA_ARG):
            return None

        def apply(prompt_ids: list[int], output_ids: list[int], logits: torch.Tensor) -> torch.Tensor:
            token = banned_id(prompt_ids, output_ids)
            if token is not None:
                logits[token] = float("-inf")
            return logits

        return apply
