import contextlib
import io
from pathlib import Path

from tools import settings_doc

ROOT = Path(__file__).resolve().parents[2]


def test_settings_doc_matches_the_settings_classes() -> None:
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        settings_doc.main()
    assert (ROOT / "docs" / "settings.md").read_text() == buffer.getvalue(), (
        "run: python -m tools.settings_doc > docs/settings.md"
    )
