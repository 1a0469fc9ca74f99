"""``python -m services.tokenizer.engines.step_audio.check MODELS_DIR``: check a models directory."""

from __future__ import annotations

import sys

from services.tokenizer.engines.step_audio.layout import main

if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
