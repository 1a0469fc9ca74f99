"""Import just the parts of PyPI ``funasr`` that the Paraformer streaming encoder needs.

``import funasr`` walks and imports every submodule of the package (several seconds, dozens of
"please install X" prints, and numba when it is installed, which breaks a vLLM CPU engine started
in the same process). Here the package object is registered without running its ``__init__``, then
only the modules that register the classes named in a Paraformer-streaming ``config.yaml`` are
imported. If ``funasr`` was already imported normally, that import is reused.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import io
import sys
import types
from pathlib import Path
from typing import Any

# Modules whose import registers ParaformerStreaming, SANMEncoderChunkOpt, ParaformerSANMDecoder,
# CifPredictorV2, WavFrontendOnline, SpecAugLFR and CharTokenizer in funasr's class tables.
_REGISTERING_MODULES = (
    "funasr.models.paraformer_streaming.model",
    "funasr.models.scama.encoder",
    "funasr.models.paraformer.decoder",
    "funasr.models.paraformer.cif_predictor",
    "funasr.frontends.wav_frontend",
    "funasr.models.specaug.specaug",
    "funasr.tokenizer.char_tokenizer",
)


def _register_bare_package() -> None:
    if "funasr" in sys.modules:
        return
    spec = importlib.util.find_spec("funasr")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            "funasr is not installed: pip install -r requirements/tokenizer-step-audio.txt", name="funasr"
        )
    package = types.ModuleType("funasr")
    package.__path__ = list(spec.submodule_search_locations)
    package.__file__ = spec.origin
    package.__package__ = "funasr"
    package.__spec__ = spec
    version = Path(package.__path__[0]) / "version.txt"
    package.__version__ = version.read_text().strip() if version.is_file() else "unknown"  # type: ignore[attr-defined]
    sys.modules["funasr"] = package


def auto_model_class() -> Any:
    """funasr's ``AutoModel``, with the Paraformer-streaming classes registered."""
    _register_bare_package()
    with contextlib.redirect_stdout(io.StringIO()):  # funasr prints install hints (ffmpeg) at import
        for name in _REGISTERING_MODULES:
            importlib.import_module(name)
        return importlib.import_module("funasr.auto.auto_model").AutoModel


def extract_fbank() -> Any:
    _register_bare_package()
    with contextlib.redirect_stdout(io.StringIO()):
        return importlib.import_module("funasr.utils.load_utils").extract_fbank
