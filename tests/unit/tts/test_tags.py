"""Instruction tags (typed controls → Step-Audio tags, the first-tag rule, conflicts) and the
speed/volume post-processing."""

from __future__ import annotations

import numpy as np
import pytest

from services.common.controls import Controls
from services.common.errors import InvalidArgument
from services.tts import tags
from services.tts.postprocess import SpeedChanger, apply_volume, change_speed

# --- typed controls → tags ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("controls", "prefix"),
    [
        (Controls(), ""),
        (Controls(emotion="happy"), "(高兴1)"),
        (Controls(emotion="angry"), "(生气1)"),
        (Controls(emotion="sad"), "(悲伤1)"),
        (Controls(emotion="coquettish"), "(撒娇1)"),
        (Controls(language="zh"), "(中文)"),
        (Controls(language="zh-CN"), "(中文)"),
        (Controls(language="en"), "(英文)"),
        (Controls(language="en-US"), "(英文)"),
        (Controls(language="ko"), "(韩语)"),
        (Controls(language="ja-JP"), "(日语)"),
        (Controls(language="zh-sichuan"), "(四川话)"),
        (Controls(language="zh_Sichuan"), "(四川话)"),
        (Controls(language="yue"), "(粤语)"),
        (Controls(language="zh-HK"), "(粤语)"),
        (Controls(style="rap"), "(RAP)"),
        (Controls(style="humming"), "(哼唱)"),
        (Controls(emotion="happy", language="en"), "(高兴1)(英文)"),  # the demo's order
        (Controls(speed=1.5, volume=0.5), ""),  # post-processing, no tag
        (Controls(style="rap", speed=0.8), "(RAP)"),
    ],
)
def test_tags_for_every_control(controls: Controls, prefix: str) -> None:
    assert tags.tags_for(controls) == prefix


def test_unsupported_language_is_invalid_argument() -> None:
    with pytest.raises(InvalidArgument, match=r"fr.*no Step-Audio tag"):
        tags.tags_for(Controls(language="fr"))


# --- the first-tag rule ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("(高兴1)今天天气真好", ("高兴1", "今天天气真好")),
        ("（高兴1）今天天气真好", ("高兴1", "今天天气真好")),  # full-width
        ("(RAP）混合括号", ("RAP", "混合括号")),  # mixed, as the reference regex allows
        ("（RAP）（哼唱）只解析第一个", ("RAP", "（哼唱）只解析第一个")),  # the second is NOT parsed
        ("(高兴1)(英文)hello", ("高兴1", "(英文)hello")),
        ("（高兴1）你好（笑）呀", ("高兴1", "你好（笑）呀")),  # the reference's greedy regex would run on
        ("  (悲伤1) 唉", ("悲伤1", " 唉")),
        ("没有标签 (高兴1)", (None, "没有标签 (高兴1)")),  # only a prefix counts
        ("()空标签", (None, "()空标签")),
        ("(未闭合", (None, "(未闭合")),
        ("(哼唱)第一行\n第二行", ("哼唱", "第一行\n第二行")),  # DOTALL, as the reference
        ("", (None, "")),
    ],
)
def test_split_leading_tag_parses_only_the_first_tag(text: str, expected: tuple) -> None:
    assert tags.split_leading_tag(text) == expected


def test_leading_tags_and_music_style() -> None:
    assert tags.leading_tags("(高兴1)（英文）(慢速1)hi (RAP)") == ["高兴1", "英文", "慢速1"]
    assert tags.music_style("RAP") == "rap"
    assert tags.music_style("哼唱") == "humming"
    assert tags.music_style("高兴1") is None
    assert tags.music_style(None) is None
    assert tags.music_style(tags.split_leading_tag("（哼唱）啦啦啦")[0]) == "humming"
    assert tags.music_style(tags.split_leading_tag("(高兴1)(RAP)yo")[0]) is None  # not first: no music


# --- conflicts and composition -----------------------------------------------------------


@pytest.mark.parametrize(
    ("controls", "text", "message"),
    [
        (Controls(style="rap"), "(哼唱)啦啦", "contradicts the tag"),
        (Controls(style="humming"), "(RAP)yo", "contradicts the tag"),
        (Controls(style="rap", emotion="happy"), "yo", "cannot be combined"),
        (Controls(style="humming", language="en"), "la", "cannot be combined"),
        (Controls(style="rap"), "(高兴1)yo", "cannot be combined"),
        (Controls(emotion="happy"), "(RAP)yo", "music tag"),
        (Controls(language="en"), "（哼唱）la", "music tag"),
        (Controls(emotion="happy"), "(生气1)哼", "contradicts"),
        (Controls(emotion="sad"), "(英文)(高兴2)hi", "contradicts"),  # any leading tag counts
        (Controls(language="en"), "(日语)こんにちは", "contradicts"),
        (Controls(speed=1.5), "(慢速1)你好", "speed"),
    ],
)
def test_conflicting_controls_are_invalid_argument(controls: Controls, text: str, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        tags.compose(text, controls)


@pytest.mark.parametrize(
    ("controls", "text", "composed"),
    [
        (Controls(), "(高兴2)(快速1)原样", "(高兴2)(快速1)原样"),  # raw tags pass through
        (Controls(emotion="happy"), "你好", "(高兴1)你好"),
        (Controls(emotion="happy"), "(英文)hello", "(高兴1)(英文)hello"),
        (Controls(emotion="happy"), "(高兴1)你好", "(高兴1)你好"),  # same tag: not repeated
        (Controls(language="yue"), "（广东话）你好", "（广东话）你好"),  # 粤语 = 广东话
        (Controls(style="rap"), "(RAP)yo", "(RAP)yo"),
        (Controls(style="humming"), "啦啦啦", "(哼唱)啦啦啦"),
        (Controls(speed=1.5), "(笑)你好", "(笑)你好"),  # unknown tags are text
        (Controls(emotion="sad", language="zh-sichuan"), "(慢速1)要得", "(悲伤1)(四川话)(慢速1)要得"),
        (Controls(speed=1.0), "(快速2)你好", "(快速2)你好"),
    ],
)
def test_compose_prefixes_typed_tags_without_repeating_raw_ones(controls: Controls, text: str, composed: str) -> None:
    assert tags.compose(text, controls) == composed
    assert tags.music_style(tags.split_leading_tag(composed)[0]) == (
        controls.style or tags.music_style(tags.split_leading_tag(text)[0])
    )


def test_conflicts_accepts_the_first_tag_alone() -> None:
    tags.conflicts(Controls(style="rap"), "RAP")
    tags.conflicts(Controls(emotion="happy"), None)
    with pytest.raises(InvalidArgument):
        tags.conflicts(Controls(style="rap"), "哼唱")


# --- post-processing ---------------------------------------------------------------------


def _speech_like(rate: int, seconds: float = 2.0, f0: float = 220.0) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    voiced = sum(np.sin(2 * np.pi * f0 * k * t) / k for k in range(1, 6))
    return (0.3 * voiced * (0.6 + 0.4 * np.sin(2 * np.pi * 3 * t))).astype(np.float32)


def _pitch(samples: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    return float(np.argmax(spectrum) * rate / len(samples))


@pytest.mark.parametrize("factor", [0.5, 0.8, 1.25, 2.0])
def test_change_speed_changes_duration_not_pitch(factor: float) -> None:
    rate = 22050
    samples = _speech_like(rate)
    out = change_speed(samples, rate, factor)
    assert out.dtype == np.float32 and len(out) == round(len(samples) / factor)
    assert _pitch(out, rate) == pytest.approx(_pitch(samples, rate), rel=0.03)
    streamed = SpeedChanger(rate, factor)
    pieces = [streamed.push(samples[i : i + 1234]) for i in range(0, len(samples), 1234)]
    assert np.array_equal(np.concatenate([*pieces, streamed.finish()]), out)  # no seams


def test_change_speed_neutral_and_range() -> None:
    samples = _speech_like(16000, 0.5)
    assert change_speed(samples, 16000, 1.0) is samples or np.array_equal(change_speed(samples, 16000, 1.0), samples)
    with pytest.raises(ValueError):
        change_speed(samples, 16000, 3.0)


def test_apply_volume_scales_and_never_clips() -> None:
    quiet = np.array([0.1, -0.2, 0.4], dtype=np.float32)
    assert np.allclose(apply_volume(quiet, 2.0), [0.2, -0.4, 0.8])
    assert np.allclose(apply_volume(quiet, 0.5), [0.05, -0.1, 0.2])
    loud = apply_volume(np.array([0.9, -0.99, 1.0], dtype=np.float32), 2.0)
    assert np.all(np.abs(loud) <= 1.0) and loud[0] > 0.95 and loud[1] < -0.95
