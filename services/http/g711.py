"""G.711 μ-law and A-law (ITU-T G.711), the telephone formats of the Realtime protocol, to and from PCM16.

Table lookups: every 8-bit code decodes to one sample and every 16-bit sample encodes to one code, so a chunk of
any length converts on its own (no state between chunks), as a stream of WebSocket events needs.
"""

from __future__ import annotations

import numpy as np

_CODES = np.arange(256, dtype=np.int32)
_SAMPLES = np.arange(-32768, 32768, dtype=np.int32)


def _ulaw_decode_table() -> np.ndarray:
    code = ~_CODES & 0xFF
    exponent = (code >> 4) & 0x07
    magnitude = ((((code & 0x0F) << 3) + 0x84) << exponent) - 0x84
    return np.where(code & 0x80, -magnitude, magnitude).astype(np.int16)


def _alaw_decode_table() -> np.ndarray:
    code = _CODES ^ 0x55
    exponent = (code >> 4) & 0x07
    mantissa = (code & 0x0F) << 4
    magnitude = np.where(exponent == 0, mantissa + 8, (mantissa + 0x108) << np.maximum(exponent - 1, 0))
    return np.where(code & 0x80, magnitude, -magnitude).astype(np.int16)


def _ulaw_encode_table() -> np.ndarray:
    shifted = _SAMPLES >> 2  # 14-bit, rounded down as the reference coder does
    negative = shifted < 0
    magnitude = np.minimum(np.where(negative, -shifted, shifted), 8159) + 33
    exponent = np.floor(np.log2(magnitude)).astype(np.int32) - 5
    mantissa = (magnitude >> (exponent + 1)) & 0x0F
    code = np.where(exponent > 7, 0x7F, (exponent << 4) | mantissa)
    return (code ^ np.where(negative, 0x7F, 0xFF)).astype(np.uint8)


def _alaw_encode_table() -> np.ndarray:
    negative = _SAMPLES < 0
    magnitude = np.where(negative, ~_SAMPLES, _SAMPLES) >> 3  # 13-bit magnitude
    exponent = np.maximum(np.floor(np.log2(np.maximum(magnitude, 1))).astype(np.int32) - 4, 0)
    exponent = np.minimum(exponent, 7)
    mantissa = np.where(exponent == 0, magnitude >> 1, magnitude >> exponent) & 0x0F
    code = np.where(magnitude >= 0x1000, 0x7F, (exponent << 4) | mantissa)
    mask = np.where(negative, 0x55, 0xD5)
    return (code ^ mask).astype(np.uint8)


_DECODE = {"g711_ulaw": _ulaw_decode_table(), "g711_alaw": _alaw_decode_table()}
_ENCODE = {"g711_ulaw": _ulaw_encode_table(), "g711_alaw": _alaw_encode_table()}
FORMATS = tuple(_DECODE)


def decode(codes: bytes, law: str) -> bytes:
    """G.711 bytes (``law`` ``g711_ulaw`` or ``g711_alaw``) to PCM16 little-endian, one sample per byte."""
    return _DECODE[law][np.frombuffer(codes, dtype=np.uint8)].astype("<i2").tobytes()


def encode(pcm16: bytes, law: str) -> bytes:
    """PCM16 little-endian (an even number of bytes) to G.711 bytes, one byte per sample."""
    samples = np.frombuffer(pcm16, dtype="<i2").astype(np.int32)
    return _ENCODE[law][samples + 32768].tobytes()
