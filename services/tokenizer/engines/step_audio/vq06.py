"""vq06 (25 Hz, 4096 codes): CosyVoice's speech_tokenizer_v1.onnx over a whisper-style log-mel."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import onnxruntime as ort

from services.tokenizer.engines.step_audio.logmel import frame_count, log_mel

MIN_WINDOW_SAMPLES = 480  # the reference drops pieces shorter than 30 ms
SAMPLES_PER_TOKEN = 640  # 4 mel frames of 160 samples


def choose_providers(preference: str) -> list[str]:
    """'auto': CUDA when onnxruntime has it, else CPU; 'cuda' insists; 'cpu' never uses a GPU."""
    available = ort.get_available_providers()
    if preference == "cpu":
        return ["CPUExecutionProvider"]
    if "CUDAExecutionProvider" in available:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    if preference == "cuda":
        raise RuntimeError(
            f"TOKENIZER_ONNX_PROVIDER=cuda but this onnxruntime offers {available}: install onnxruntime-gpu"
        )
    return ["CPUExecutionProvider"]


def token_count(samples: int) -> int:
    """vq06 tokens the model returns for a window of ``samples`` samples (0 below 480 samples)."""
    return 0 if samples < MIN_WINDOW_SAMPLES else math.ceil(frame_count(samples) / 4)


class Vq06Tokenizer:
    """One onnxruntime session shared by all streams (``run`` is thread-safe)."""

    def __init__(self, path: Path, provider: str = "auto") -> None:
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        self._session = ort.InferenceSession(str(path), sess_options=options, providers=choose_providers(provider))
        inputs = self._session.get_inputs()
        if len(inputs) != 2:
            raise ValueError(f"{path}: expected inputs (feats, feats_length), found {[i.name for i in inputs]}")
        self._feats_name, self._length_name = inputs[0].name, inputs[1].name

    @property
    def providers(self) -> list[str]:
        return self._session.get_providers()

    def tokens(self, window: np.ndarray) -> np.ndarray:
        """Codes in [0, 4096) for one window (≤ 30 s) of normalised 16 kHz audio."""
        if len(window) < MIN_WINDOW_SAMPLES:
            return np.zeros(0, dtype=np.int64)
        feats = log_mel(window)[None]
        length = np.array([feats.shape[2]], dtype=np.int32)
        codes = self._session.run(None, {self._feats_name: feats, self._length_name: length})[0]
        return np.asarray(codes, dtype=np.int64).reshape(-1)
