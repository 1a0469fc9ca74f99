"""Accuracy of the user-emotion reading on labelled recordings, through a running gateway.

    python -m tools.emotion_eval MANIFEST [--address 127.0.0.1:50051] [--out result.json]

MANIFEST is a JSON list (or JSON lines) of {"file": "a.wav", "emotion": "sad"}; files are relative to the manifest,
emotions one of services.common.emotion.SPEAKER_EMOTIONS. Each recording goes through Chat as spoken input with a
text-only, one-token reply (the reading happens before the reply, whichever engine makes it: the tokenizer's
classifier, or the chat model hearing audio tokens). Reported: coverage (share of recordings with a detected
emotion), accuracy over the detected ones and over all (not detected counts as wrong), and the confusion table.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

from stepaudio.common.v1 import speech_pb2
from stepaudio.gateway.v1 import gateway_pb2
from stepaudio_client.client import DEFAULT_ADDRESS, GatewayClient, wav_audio

from services.common.emotion import SPEAKER_EMOTIONS, from_message

NOT_DETECTED = "not detected"


@dataclass
class Scores:
    total: int = 0
    detected: int = 0
    correct: int = 0
    engines: list[str] = field(default_factory=list)
    confusion: dict[str, dict[str, int]] = field(default_factory=dict)  # truth → reading → count

    @property
    def coverage(self) -> float:
        return self.detected / self.total if self.total else 0.0

    @property
    def accuracy_detected(self) -> float:
        return self.correct / self.detected if self.detected else 0.0

    @property
    def accuracy_all(self) -> float:
        return self.correct / self.total if self.total else 0.0

    def report(self) -> dict[str, object]:
        return {
            **asdict(self),
            "coverage": self.coverage,
            "accuracy_detected": self.accuracy_detected,
            "accuracy_all": self.accuracy_all,
        }


def score(pairs: list[tuple[str, str | None]], engines: list[str] | None = None) -> Scores:
    """``pairs`` of (true label, reading or None)."""
    scores = Scores(total=len(pairs), engines=sorted(set(engines or [])))
    confusion: dict[str, Counter[str]] = {}
    for truth, reading in pairs:
        confusion.setdefault(truth, Counter())[reading or NOT_DETECTED] += 1
        if reading is not None:
            scores.detected += 1
            scores.correct += reading == truth
    scores.confusion = {truth: dict(counts) for truth, counts in sorted(confusion.items())}
    return scores


def load_manifest(path: Path) -> list[tuple[Path, str]]:
    text = path.read_text(encoding="utf-8").strip()
    entries = json.loads(text) if text.startswith("[") else [json.loads(line) for line in text.splitlines() if line]
    items = []
    for entry in entries:
        if entry["emotion"] not in SPEAKER_EMOTIONS:
            raise ValueError(f"{entry['file']}: emotion {entry['emotion']!r} is not one of {SPEAKER_EMOTIONS}")
        items.append((path.parent / entry["file"], entry["emotion"]))
    return items


async def read_emotions(client: GatewayClient, files: list[Path], timeout: float) -> list[tuple[str | None, str]]:
    """(label or None, engine) of each recording, as the gateway's Chat reports it."""
    readings = []
    for path in files:
        result = await client.chat(
            audio=wav_audio(path.read_bytes()),
            text_only=True,
            sampling=speech_pb2.SamplingParams(temperature=0.0, max_tokens=1),
            reply_mode=gateway_pb2.REPLY_MODE_UNSPECIFIED,
            timeout=timeout,
        )
        reading = from_message(result.user_emotion)
        readings.append((reading.label, reading.engine))
    return readings


async def evaluate(address: str, manifest: Path, timeout: float = 120.0) -> Scores:
    items = load_manifest(manifest)
    async with GatewayClient(address) as client:
        readings = await read_emotions(client, [path for path, _ in items], timeout)
    pairs = [(truth, label) for (_, truth), (label, _) in zip(items, readings, strict=True)]
    return score(pairs, [engine for _, engine in readings if engine])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("manifest", type=Path)
    parser.add_argument("--address", default=DEFAULT_ADDRESS, help="gateway host:port")
    parser.add_argument("--timeout", type=float, default=120.0, help="deadline of each turn, in seconds")
    parser.add_argument("--out", type=Path, help="also write the result as JSON here")
    args = parser.parse_args(argv)
    scores = asyncio.run(evaluate(args.address, args.manifest, args.timeout))
    report = scores.report()
    print(
        f"{scores.total} recordings, engine(s) {', '.join(scores.engines) or 'none'}: coverage {scores.coverage:.1%}, "
        f"accuracy {scores.accuracy_detected:.1%} of detected, {scores.accuracy_all:.1%} of all"
    )
    for truth, readings in scores.confusion.items():
        print(f"  {truth:<10} → " + ", ".join(f"{label} {count}" for label, count in sorted(readings.items())))
    if args.out:
        args.out.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
