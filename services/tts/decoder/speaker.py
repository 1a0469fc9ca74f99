"""CAM++ speaker embedding from ``campplus.onnx`` (onnxruntime, CPU, one intra-op thread)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from services.tts.decoder.audio import kaldi_fbank
from services.tts.decoder.config import DecoderConfigError

EMBEDDING_DIM = 192


class SpeakerEncoder:
    def __init__(self, path: Path, threads: int = 1) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        try:
            self._session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as error:
            raise DecoderConfigError(f"{path}: not a loadable ONNX model ({error})") from error
        inputs, outputs = self._session.get_inputs(), self._session.get_outputs()
        if len(inputs) != 1 or len(inputs[0].shape) != 3 or inputs[0].shape[-1] not in (80, "80"):
            raise DecoderConfigError(f"{path}: expected one input [B, T, 80], got {[i.shape for i in inputs]}")
        if not outputs or outputs[0].shape[-1] not in (EMBEDDING_DIM, str(EMBEDDING_DIM)):
            raise DecoderConfigError(f"{path}: expected output[0] [B, {EMBEDDING_DIM}], got {outputs[0].shape}")
        self._input = inputs[0].name  # "input" upstream; addressed by position like the reference

    def embed(self, samples_16k: np.ndarray) -> np.ndarray:
        """16 kHz float waveform → float32 [192]: 80-bin Kaldi fbank, per-utterance mean removed."""
        feats = kaldi_fbank(samples_16k)
        if feats.shape[0] < 1:
            raise ValueError("prompt audio too short for the speaker embedding (< 25 ms at 16 kHz)")
        feats = feats - feats.mean(axis=0, keepdims=True)
        (embedding, *_) = self._session.run(None, {self._input: feats[None].astype(np.float32)})
        return np.asarray(embedding, dtype=np.float32).reshape(-1)
