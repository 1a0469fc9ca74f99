"""Validation gaps of the stage RPCs: non-finite numbers, id patterns, language hints, prompt formats."""

from __future__ import annotations

import math
from pathlib import Path

import grpc
import pytest
from stepaudio.chat.v1 import chat_pb2, chat_pb2_grpc
from stepaudio.common.v1 import audio_pb2, speech_pb2
from stepaudio.tokenizer.v1 import tokenizer_pb2, tokenizer_pb2_grpc
from stepaudio.tts.v1 import tts_pb2, tts_pb2_grpc

from services.chat.engine import Sampling
from services.chat.servicer import ChatServicer, resolve_sampling
from services.chat.settings import ChatSettings
from services.common.audio import DeclaredFormat
from services.common.controls import controls_from_message
from services.common.errors import InvalidArgument
from services.common.languages import RECOGNITION_LANGUAGES, language_hint
from services.common.voice_prompts import check_fields, prompt_wav_from
from services.tokenizer.servicer import TokenizerServicer
from services.tokenizer.settings import TokenizerSettings
from services.tts.servicer import TtsServicer
from services.tts.settings import TtsSettings
from services.tts.voices import VoiceRegistry
from tests.conftest import serving
from tests.fakes import FakeChatEngine, FakeCloningTtsEngine, FakeTokenizerEngine
from tests.unit.test_stage_servicers import PCM16_16K, assert_serving, expect_code, pcm
from tests.unit.tts.test_voices import TOKENS, builtin_dir, prompt_wav

INVALID = grpc.StatusCode.INVALID_ARGUMENT
DEFAULT = Sampling(0.7, 0.9, 50, 64, 1.0)
NON_FINITE = [math.nan, math.inf, -math.inf]

# --- sampling ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["temperature", "top_p", "repetition_penalty"])
@pytest.mark.parametrize("value", NON_FINITE)
def test_sampling_refuses_non_finite_numbers(name: str, value: float) -> None:
    with pytest.raises(InvalidArgument, match=f"sampling.{name} is (nan|inf|-inf): send a finite number"):
        resolve_sampling(speech_pb2.SamplingParams(**{name: value}), DEFAULT)


def test_sampling_still_takes_finite_values_at_its_bounds() -> None:
    sampling = resolve_sampling(speech_pb2.SamplingParams(temperature=0.0, top_p=1.0, repetition_penalty=2.0), DEFAULT)
    assert (sampling.temperature, sampling.top_p, sampling.repetition_penalty) == (0.0, 1.0, 2.0)


async def test_a_nan_temperature_is_invalid_argument_and_never_reaches_the_engine() -> None:
    engine = FakeChatEngine()
    settings = ChatSettings()
    async with serving(
        settings, chat_pb2_grpc.add_ChatServiceServicer_to_server, ChatServicer(engine, settings), "c"
    ) as address:
        async with grpc.aio.insecure_channel(address) as channel:
            stub = chat_pb2_grpc.ChatServiceStub(channel)
            request = chat_pb2.GenerateRequest(
                messages=[chat_pb2.ChatMessage(role=chat_pb2.ROLE_USER, text="hi")],
                sampling=speech_pb2.SamplingParams(temperature=math.nan),
            )
            await expect_code(stub.Generate(request), INVALID, "sampling.temperature is nan")
            assert engine.requests == []
            await assert_serving(channel)


# --- voice controls -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["speed", "volume"])
@pytest.mark.parametrize("value", NON_FINITE)
def test_controls_refuse_non_finite_multipliers(name: str, value: float) -> None:
    with pytest.raises(InvalidArgument, match=f"controls.{name} is (nan|inf|-inf): use a number in"):
        controls_from_message(speech_pb2.VoiceControls(**{name: value}))


@pytest.mark.parametrize("language", ["zh\n", "en us", "x" * 100, "中文", "-en", "zh--CN", "a"])
def test_controls_refuse_a_language_that_is_no_tag(language: str) -> None:
    with pytest.raises(InvalidArgument, match="is not a language tag"):
        controls_from_message(speech_pb2.VoiceControls(language=language))


@pytest.mark.parametrize("language", ["", "zh", "en-US", "zh_sichuan", "zh-x-sichuan", "yue"])
def test_controls_take_language_tags(language: str) -> None:
    assert controls_from_message(speech_pb2.VoiceControls(language=language)).language == language


# --- voice ids and prompts ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("voice_id", ["abc\n", "abc\r\n", "\nabc", "于谦", "𝐀" * 64, "a" * 65, "-a", "_a", "a b", ""])
def test_voice_ids_must_match_the_whole_pattern(voice_id: str) -> None:
    with pytest.raises(InvalidArgument, match=r"voice_id .* is not valid"):
        check_fields(voice_id, "", "transcript", (), ())


@pytest.mark.parametrize("voice_id", ["a", "yuqian", "alice-2", "A_b-C", "7" + "x" * 63])
def test_ascii_voice_ids_up_to_64_characters_are_valid(voice_id: str) -> None:
    check_fields(voice_id, "", "transcript", (), ())


def test_language_codes_are_bounded_in_number_and_length() -> None:
    check_fields("v", "", "transcript", (), ("zh",) * 16)
    with pytest.raises(InvalidArgument, match="17 language codes is over the limit of 16"):
        check_fields("v", "", "transcript", (), ("zh",) * 17)
    with pytest.raises(InvalidArgument, match="is not a BCP-47 tag"):
        check_fields("v", "", "transcript", (), ("zh" + "-abc" * 8,))


def test_prompt_tokens_are_bounded_by_what_a_30_s_prompt_has() -> None:
    check_fields("v", "", "transcript", (65536,) * 1255, ())
    with pytest.raises(InvalidArgument, match="1256 prompt tokens is more than a 30 s prompt has"):
        check_fields("v", "", "transcript", (65536,) * 1256, ())


@pytest.mark.parametrize("rate", [-16000, 1, 7999, 48001, 2**31 - 1])
def test_a_pcm16_prompt_with_an_impossible_rate_is_invalid_argument(rate: int) -> None:
    with pytest.raises(InvalidArgument, match=f"format.sample_rate_hz {rate} is out of range"):
        prompt_wav_from(bytes(64000), DeclaredFormat("pcm16", rate, 1))


async def test_tts_rejects_a_voice_id_with_a_trailing_newline_and_stores_nothing(tmp_path: Path) -> None:
    registry = VoiceRegistry.open(builtin_dir(tmp_path / "builtin"), tmp_path / "registry")
    settings = TtsSettings()
    servicer = TtsServicer(FakeCloningTtsEngine(registry), settings)
    async with serving(settings, tts_pb2_grpc.add_TtsServiceServicer_to_server, servicer, "tts") as address:
        async with grpc.aio.insecure_channel(address) as channel:
            stub = tts_pb2_grpc.TtsServiceStub(channel)
            wav = audio_pb2.Audio(
                format=audio_pb2.AudioFormat(encoding=audio_pb2.AUDIO_ENCODING_WAV), content=prompt_wav()
            )
            request = tts_pb2.RegisterVoiceRequest(
                voice_id="yuqian\n", audio=wav, transcript="你好", prompt_tokens=list(TOKENS)
            )
            await expect_code(stub.RegisterVoice(request), INVALID, "voice_id 'yuqian\\n' is not valid")
            assert [voice.voice_id for voice in registry.list()] == ["Tingting"]
            pcm_prompt = audio_pb2.Audio(
                format=audio_pb2.AudioFormat(encoding=audio_pb2.AUDIO_ENCODING_PCM16, sample_rate_hz=-5),
                content=bytes(64000),
            )
            request = tts_pb2.RegisterVoiceRequest(voice_id="v", audio=pcm_prompt, transcript="你好")
            await expect_code(stub.RegisterVoice(request), INVALID, "format.sample_rate_hz -5 is out of range")
            await assert_serving(channel)


# --- language hints -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("hint", "normalised"),
    [("", ""), ("zh", "zh"), ("en-US", "en-US"), ("ZH-CN", "zh-CN"), ("ja", "ja"), ("zh-Hans-CN", "zh-Hans-CN")],
)
def test_language_hints_are_normalised(hint: str, normalised: str) -> None:
    assert language_hint(hint) == normalised


@pytest.mark.parametrize("hint", ["xx", "en_US", "yue", "e", "en-", "zh\n", " zh", "english", "zh-" + "a" * 9])
def test_unknown_language_hints_name_the_accepted_ones(hint: str) -> None:
    with pytest.raises(InvalidArgument) as raised:
        language_hint(hint, "config.language")
    assert "config.language" in raised.value.message and "leave it empty" in raised.value.message
    assert "en, es, et" in raised.value.message  # the accepted languages, listed


def test_the_accepted_languages_are_whisper_bases() -> None:
    from faster_whisper.tokenizer import _LANGUAGE_CODES

    # whisper-base has no <|yue|> token: only large-v3 knows Cantonese.
    assert set(_LANGUAGE_CODES) - {"yue"} == RECOGNITION_LANGUAGES


class RecordingTokenizerEngine(FakeTokenizerEngine):
    def __init__(self) -> None:
        super().__init__()
        self.languages: list[str] = []

    def open_stream(self, options):
        self.languages.append(options.language)
        return super().open_stream(options)


async def test_the_tokenizer_refuses_a_bad_language_hint_before_the_engine_sees_it() -> None:
    engine = RecordingTokenizerEngine()
    settings = TokenizerSettings()
    servicer = TokenizerServicer(engine, settings)
    async with serving(settings, tokenizer_pb2_grpc.add_TokenizerServiceServicer_to_server, servicer, "t") as address:
        async with grpc.aio.insecure_channel(address) as channel:
            stub = tokenizer_pb2_grpc.TokenizerServiceStub(channel)
            audio = audio_pb2.Audio(format=PCM16_16K, content=pcm(0.5))

            def tokenize(language: str):
                config = tokenizer_pb2.TokenizeConfig(emit_transcript=True, language=language)
                return stub.Tokenize(tokenizer_pb2.TokenizeRequest(config=config, audio=audio))

            await expect_code(tokenize("klingon"), INVALID, "config.language 'klingon' is not a language")
            stream = stub.StreamingTokenize(
                iter([
                    tokenizer_pb2.StreamingTokenizeRequest(
                        config=tokenizer_pb2.TokenizeConfig(format=PCM16_16K, emit_transcript=True, language="en_US")
                    ),
                    tokenizer_pb2.StreamingTokenizeRequest(audio_content=pcm(0.5)),
                ])
            )  # fmt: skip
            await expect_code(stream, INVALID, "send a BCP-47 tag")
            assert engine.languages == []
            await tokenize("ZH-cn")
            assert engine.languages == ["zh-cn"]
            await assert_serving(channel)
