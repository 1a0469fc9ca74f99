"""One real cluster per test session: four service processes with the embedded models, and the HTTP service."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tools.cluster import ROOT, LocalCluster


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    run_dir: Path = tmp_path_factory.mktemp("cluster")
    cluster = LocalCluster(run_dir, with_http=True, env={"TOKENIZER_MODELS_CACHE_DIR": str(ROOT / ".models"),
                                                         "CHAT_MODELS_CACHE_DIR": str(ROOT / ".models")})  # fmt: skip
    cluster.start()
    yield cluster
    codes = cluster.stop()
    expected = {"tokenizer": 0, "chat": 0, "tts": 0, "gateway": 0, "http": 0}
    assert codes == expected, "a service did not shut down cleanly"
