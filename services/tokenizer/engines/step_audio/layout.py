"""The Step-Audio-Tokenizer directory layout and a check that names every problem before loading."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

CHECKPOINT = "Step-Audio-Tokenizer"
PARAFORMER_DIR = "dengcunqin/speech_paraformer-large_asr_nat-zh-cantonese-en-16k-vocab8501-online"
CODEBOOK_FILE = "linguistic_tokenizer.npy"
VQ06_FILE = "speech_tokenizer_v1.onnx"
VQ02_CODES = 1024
VQ06_CODES = 4096
PARAFORMER_FILES = ("config.yaml", "model.pt", "am.mvn", "tokens.json")


@dataclass(frozen=True)
class TokenizerPaths:
    root: Path  # .../Step-Audio-Tokenizer

    @classmethod
    def under(cls, models_dir: str | Path) -> TokenizerPaths:
        """``models_dir`` holds ``Step-Audio-Tokenizer/``; the checkpoint folder itself is accepted too."""
        base = Path(models_dir)
        return cls(base if base.name == CHECKPOINT and not (base / CHECKPOINT).is_dir() else base / CHECKPOINT)

    @property
    def codebook(self) -> Path:
        return self.root / CODEBOOK_FILE

    @property
    def vq06_onnx(self) -> Path:
        return self.root / VQ06_FILE

    @property
    def paraformer(self) -> Path:
        return self.root / PARAFORMER_DIR


class ModelsDirError(Exception):
    """The models directory is incomplete or malformed; ``problems`` lists every finding."""

    def __init__(self, root: Path, problems: list[str]) -> None:
        self.problems = problems
        listing = "\n".join(f"  - {problem}" for problem in problems)
        super().__init__(f"the Step-Audio tokenizer models directory {root} is not usable:\n{listing}")


def _check_codebook(path: Path) -> list[str]:
    try:
        codebook = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as error:
        return [f"{path}: not a NumPy .npy array ({error})"]
    if codebook.ndim != 2 or codebook.shape[0] != VQ02_CODES or codebook.shape[1] < 1:
        return [f"{path}: expected a ({VQ02_CODES}, D) k-means codebook, found shape {codebook.shape}"]
    if not np.issubdtype(codebook.dtype, np.floating):
        return [f"{path}: expected floating-point centres, found dtype {codebook.dtype}"]
    return []


def _check_onnx(path: Path) -> list[str]:
    with path.open("rb") as handle:
        head = handle.read(64)
    # An ONNX ModelProto starts with field 1 (ir_version, varint): byte 0x08. Git LFS pointers and
    # HTML error pages (failed downloads) start with text.
    if len(head) < 16 or head[0] != 0x08:
        hint = " (a Git LFS pointer: fetch the real file)" if head.startswith(b"version https://git-lfs") else ""
        return [f"{path}: not an ONNX model{hint}"]
    return []


def _check_paraformer(folder: Path) -> list[str]:
    problems = [f"{folder / name}: missing" for name in PARAFORMER_FILES if not (folder / name).is_file()]
    tokens = folder / "tokens.json"
    if tokens.is_file():
        try:
            token_list = json.loads(tokens.read_text(encoding="utf-8"))
            if not isinstance(token_list, list) or len(token_list) < 4:
                problems.append(f"{tokens}: expected a JSON list of tokens")
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            problems.append(f"{tokens}: not JSON ({error})")
    config = folder / "config.yaml"
    if config.is_file():
        text = config.read_text(encoding="utf-8", errors="replace")
        for key in ("ParaformerStreaming", "encoder_conf", "frontend_conf", "WavFrontendOnline"):
            if key not in text:
                problems.append(f"{config}: does not mention {key} (not a Paraformer-streaming config)")
    cmvn = folder / "am.mvn"
    if cmvn.is_file() and not cmvn.read_text(errors="replace").lstrip().startswith("<Nnet>"):
        problems.append(f"{cmvn}: not a Kaldi nnet CMVN file (<Nnet> … </Nnet>)")
    model = folder / "model.pt"
    if model.is_file() and model.stat().st_size < 1024:
        problems.append(f"{model}: {model.stat().st_size} bytes, too small for a checkpoint (a Git LFS pointer?)")
    return problems


def check_models_dir(models_dir: str | Path) -> list[str]:
    """Every missing or malformed file, as one message each; empty when the directory is usable.

    Reads headers and small files only: nothing is loaded into a model."""
    paths = TokenizerPaths.under(models_dir)
    if not paths.root.is_dir():
        return [f"{paths.root}: missing (set TOKENIZER_MODELS_DIR to the directory that holds {CHECKPOINT}/)"]
    problems: list[str] = []
    for path, check in ((paths.codebook, _check_codebook), (paths.vq06_onnx, _check_onnx)):
        problems += check(path) if path.is_file() else [f"{path}: missing"]
    problems += _check_paraformer(paths.paraformer) if paths.paraformer.is_dir() else [f"{paths.paraformer}: missing"]
    return problems


def require_models_dir(models_dir: str | Path) -> TokenizerPaths:
    """The paths of a usable directory, or ModelsDirError naming all problems."""
    problems = check_models_dir(models_dir)
    paths = TokenizerPaths.under(models_dir)
    if problems:
        raise ModelsDirError(paths.root, problems)
    return paths


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m services.tokenizer.engines.step_audio.layout MODELS_DIR", file=sys.stderr)
        return 2
    problems = check_models_dir(argv[0])
    if problems:
        print(ModelsDirError(TokenizerPaths.under(argv[0]).root, problems), file=sys.stderr)
        return 1
    print(f"ok: {TokenizerPaths.under(argv[0]).root}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
