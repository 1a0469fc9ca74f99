"""vq02 (16.7 Hz, 1024 codes): the Paraformer streaming encoder (PyPI funasr) + nearest k-means centre.

The encoder runs as in the reference: strides of 960·chunk_size[1] samples (240 ms), chunk_size
[0, 4, 5], encoder look-back 4, decoder look-back 1, the frontend and encoder state carried in a
per-stream cache. Feeding any piece sizes gives the codes of one call on the whole clip. The
frontend's dither is set to 0 (the reference keeps funasr's default 1.0, which makes codes vary
from run to run).
"""

from __future__ import annotations

import contextlib
import io
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from services.tokenizer.engines.step_audio.funasr_import import auto_model_class, extract_fbank

CHUNK_SIZE = (0, 4, 5)
ENCODER_CHUNK_LOOK_BACK = 4
DECODER_CHUNK_LOOK_BACK = 1
STRIDE_SAMPLES = 960 * CHUNK_SIZE[1]  # 3840 samples = 240 ms -> 4 encoder frames


def nearest_centre(features: np.ndarray, codebook: np.ndarray) -> np.ndarray:
    """Index of the nearest centre (Euclidean) for each row of ``features`` [n, D] -> [n] int64."""
    if len(features) == 0:
        return np.zeros(0, dtype=np.int64)
    # |f - c|^2 = |f|^2 - 2 f.c + |c|^2; |f|^2 is constant per row so it does not change the argmin.
    scores = (codebook * codebook).sum(axis=1)[None, :] - 2.0 * (features @ codebook.T)
    return scores.argmin(axis=1).astype(np.int64)


@dataclass
class Vq02State:
    """Per-stream state: funasr's cache (frontend waveform/LFR splice, encoder look-back) and the
    samples of an incomplete stride."""

    cache: dict[str, Any]
    pending: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.float32))


class Vq02Encoder:
    """One loaded Paraformer, shared by all streams; calls are serialised (one CPU thread)."""

    def __init__(self, folder: Path, codebook: np.ndarray) -> None:
        auto_model = auto_model_class()
        with contextlib.redirect_stdout(io.StringIO()):  # funasr prints its version banner
            auto = auto_model(
                model=str(folder), disable_update=True, device="cpu", ncpu=1, log_level="ERROR", disable_pbar=True
            )
        self._model = auto.model
        self._kwargs = auto.kwargs
        self._frontend = auto.kwargs["frontend"]
        self._frontend.dither = 0.0  # deterministic codes (documented deviation from the reference)
        self._extract_fbank = extract_fbank()
        dim = int(self._kwargs["encoder_conf"]["output_size"])
        if codebook.shape[1] != dim:
            raise ValueError(f"the k-means codebook has dimension {codebook.shape[1]}, the encoder outputs {dim}")
        self._codebook = np.ascontiguousarray(codebook, dtype=np.float32)
        self._lock = threading.Lock()

    def new_state(self) -> Vq02State:
        cache: dict[str, Any] = {}
        self._model.init_cache(
            cache,
            chunk_size=list(CHUNK_SIZE),
            encoder_chunk_look_back=ENCODER_CHUNK_LOOK_BACK,
            decoder_chunk_look_back=DECODER_CHUNK_LOOK_BACK,
            encoder_conf=self._kwargs["encoder_conf"],
            frontend_conf=self._kwargs["frontend_conf"],
        )
        return Vq02State(cache)

    def push(self, state: Vq02State, samples: np.ndarray, final: bool = False) -> np.ndarray:
        """Codes for every stride completed by ``samples``; with ``final`` also the tail."""
        audio = np.concatenate([state.pending, samples.astype(np.float32, copy=False)])
        whole = len(audio) // STRIDE_SAMPLES * STRIDE_SAMPLES
        pieces = [audio[start : start + STRIDE_SAMPLES] for start in range(0, whole, STRIDE_SAMPLES)]
        state.pending = audio[whole:]
        if final:
            pieces.append(state.pending)  # may be empty: the frontend still flushes its cached frames
            state.pending = np.zeros(0, dtype=np.float32)
        features = [self._encode(state, piece, final and i == len(pieces) - 1) for i, piece in enumerate(pieces)]
        if not features:
            return np.zeros(0, dtype=np.int64)
        return nearest_centre(np.concatenate(features), self._codebook)

    def _encode(self, state: Vq02State, piece: np.ndarray, final: bool) -> np.ndarray:
        with self._lock, torch.inference_mode():
            feats, lengths = self._extract_fbank(
                [torch.from_numpy(piece)],
                data_type="sound",
                frontend=self._frontend,
                cache=state.cache["frontend"],
                is_final=final,
            )
            new_frames = int(lengths[0]) if feats.shape[1] else 0
            if new_frames == 0:
                return np.zeros((0, self._codebook.shape[1]), dtype=np.float32)
            out, _ = self._model.encode_chunk(feats, lengths, cache=state.cache, is_final=final)
            return out[0, -new_frames:].float().numpy()

    def state_bytes(self, state: Vq02State) -> int:
        """Bytes held by a stream's state (tensors and arrays), for memory-bound checks."""
        return state.pending.nbytes + _tensor_bytes(state.cache)


def _tensor_bytes(value: object) -> int:
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, np.ndarray):
        return value.nbytes
    if isinstance(value, dict):
        return sum(_tensor_bytes(v) for v in value.values())
    if isinstance(value, list | tuple):
        return sum(_tensor_bytes(v) for v in value)
    return 0
