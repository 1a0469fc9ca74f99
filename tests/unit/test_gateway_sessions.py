"""Sessions stay bounded: the prompt's history fits the chat context (oldest turns dropped first), stored history
is capped, unused sessions expire (on access and by the periodic sweep), and ids are checked whole."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from dataclasses import asdict
from pathlib import Path

import grpc
import pytest
from stepaudio.common.v1 import speech_pb2
from stepaudio.gateway.v1 import gateway_pb2

from services.common.errors import InvalidArgument, NotFound, ResourceExhausted
from services.gateway.__main__ import build
from services.gateway.history import MESSAGE_OVERHEAD_TOKENS, HistoryBudget, estimate_tokens, fit_history
from services.gateway.sessions import Session, SessionStore, Turn
from tests.unit.test_gateway import Cluster
from tests.unit.test_stage_servicers import expect_code
from tests.unit.test_streaming_chat import FORMAT, Microphone

# --- the history that goes into a prompt -----------------------------------------------------------------------


def exchanges(count: int, chars: int = 50) -> list[Turn]:
    turns = []
    for n in range(count):
        turns += [Turn("user", f"q{n}".ljust(chars, ".")), Turn("assistant", f"a{n}".ljust(chars, "."))]
    return turns


def test_the_newest_turns_that_fit_are_kept_oldest_first() -> None:
    history = exchanges(10)
    kept = fit_history(history, HistoryBudget(max_turns=16, max_chars=210, max_tokens=None, chars_per_token=1.0))
    assert kept == history[-4:]  # 4 × 50 characters fit in 210, a fifth turn would not


def test_the_token_budget_counts_the_template_cost_of_each_message() -> None:
    history = exchanges(10)
    per_turn = 50 + MESSAGE_OVERHEAD_TOKENS
    budget = HistoryBudget(max_turns=16, max_chars=10**6, max_tokens=3 * per_turn, chars_per_token=1.0)
    kept = fit_history(history, budget)
    assert kept == history[-2:]  # three turns fit, but history starts with the user's question
    assert fit_history(history, HistoryBudget(16, 10**6, 4 * per_turn - 1, 1.0)) == history[-2:]
    assert fit_history(history, HistoryBudget(16, 10**6, 4 * per_turn, 1.0)) == history[-4:]
    assert fit_history(history, HistoryBudget(16, 10**6, 0, 1.0)) == []
    assert fit_history(history, HistoryBudget(1, 10**6, None, 1.0)) == history[-2:]  # the count limit still holds
    assert fit_history(history, HistoryBudget(0, 10**6, None, 1.0)) == []


def test_token_estimates() -> None:
    assert estimate_tokens("x" * 40, 4.0) == 10 + MESSAGE_OVERHEAD_TOKENS
    assert estimate_tokens("", 1.0, "<audio_1><audio_2><audio_3>") == 3 + MESSAGE_OVERHEAD_TOKENS


async def test_a_long_session_still_fits_the_chat_context(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path, max_history_turns=100, max_history_chars=10**6, max_stored_turns=1000)
    await cluster.start()
    try:
        window = cluster.chat.info.max_context_tokens  # 1024: of which 512 are kept for the reply
        session = await cluster.client.create_session(system_prompt="Be brief.")
        stored = await cluster.store.get(session.session_id)
        stored.add(exchanges(60), 1000)  # 6000 characters: far more than the context holds
        await cluster.store.save(stored)

        result = await cluster.client.chat("and now?", session_id=session.session_id, text_only=True)
        assert result.reply_text == cluster.chat.reply
        messages, _ = cluster.chat.requests[-1]
        assert (messages[0].role, messages[0].text) == ("system", "Be brief.")
        assert (messages[-1].role, messages[-1].text) == ("user", "and now?")
        history = [Turn(m.role, m.text) for m in messages[1:-1]]
        assert history and history == exchanges(60)[-len(history) :]  # the newest, in order
        assert history[0].speaker == "user"
        assert sum(estimate_tokens(m.text, 1.0) for m in messages) <= window - 512
        assert sum(estimate_tokens(m.text, 1.0) for m in messages) > window - 512 - 2 * (50 + MESSAGE_OVERHEAD_TOKENS)

        # a request asking for a longer reply leaves less room for history
        sampling = speech_pb2.SamplingParams(max_tokens=900)
        await cluster.client.chat("short?", session_id=session.session_id, text_only=True, sampling=sampling)
        messages, _ = cluster.chat.requests[-1]
        assert [m.text for m in messages] == ["Be brief.", "and now?", cluster.chat.reply, "short?"]
    finally:
        await cluster.stop()


async def test_stored_history_keeps_the_newest_turns(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path, max_stored_turns=4)
    await cluster.start()
    try:
        session = await cluster.client.create_session()
        for n in range(3):
            await cluster.client.chat(f"turn {n}", session_id=session.session_id, text_only=True)
        stored = await cluster.client.get_session(session.session_id)
        assert [entry.text for entry in stored.history] == ["turn 1", cluster.chat.reply, "turn 2", cluster.chat.reply]
    finally:
        await cluster.stop()


# --- validation ----------------------------------------------------------------------------------------------------


async def test_session_ids_are_matched_whole(tmp_path: Path) -> None:
    store = SessionStore(tmp_path, 10)
    session = await store.create("prompt", "")
    for bad in (session.session_id + "\n", " " + session.session_id, session.session_id.upper()):
        with pytest.raises(InvalidArgument, match="malformed"):
            await store.get(bad)
    assert (await store.get(session.session_id)).system_prompt == "prompt"


async def test_system_prompts_are_bounded_in_every_rpc(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path)
    await cluster.start()
    try:
        long = "x" * 201
        await expect_code(
            cluster.client.chat_stream("hi", system_prompt=long),
            grpc.StatusCode.INVALID_ARGUMENT,
            "system_prompt is 201 characters; the limit is 200",
        )
        mic = Microphone(gateway_pb2.StreamingChatConfig(input_format=FORMAT, system_prompt=long))
        mic.hang_up()
        await expect_code(
            cluster.client.stub.StreamingChat(mic.requests()),
            grpc.StatusCode.INVALID_ARGUMENT,
            "config.system_prompt is 201 characters; the limit is 200",
        )
        await expect_code(
            cluster.client.stub.CreateSession(gateway_pb2.CreateSessionRequest(system_prompt=long)),
            grpc.StatusCode.INVALID_ARGUMENT,
            "system_prompt is 201 characters",
        )
        assert (await cluster.client.chat("hi", system_prompt="x" * 200, text_only=True)).reply_text
    finally:
        await cluster.stop()


# --- expiry and the sweep -----------------------------------------------------------------------------------------


def age(directory: Path, session_id: str, seconds: float) -> None:
    when = time.time() - seconds
    os.utime(directory / f"{session_id}.json", (when, when))


async def test_an_unused_session_expires_when_next_asked_for(tmp_path: Path) -> None:
    store = SessionStore(tmp_path, 10, ttl_seconds=60)
    used, unused = await store.create("a", ""), await store.create("b", "")
    age(tmp_path, used.session_id, 50)
    age(tmp_path, unused.session_id, 70)
    with pytest.raises(NotFound, match="expired or deleted"):
        await store.get(unused.session_id)
    assert not (tmp_path / f"{unused.session_id}.json").exists()
    await store.get(used.session_id)  # a read is a use: the session is fresh again
    assert time.time() - (tmp_path / f"{used.session_id}.json").stat().st_mtime < 5


async def test_without_a_ttl_sessions_never_expire(tmp_path: Path) -> None:
    store = SessionStore(tmp_path, 10, ttl_seconds=0)
    session = await store.create("a", "")
    age(tmp_path, session.session_id, 10 * 365 * 86400)
    assert await store.sweep() == 0
    assert (await store.get(session.session_id)).system_prompt == "a"


async def test_the_sweep_deletes_expired_sessions_but_not_one_in_use(tmp_path: Path) -> None:
    store = SessionStore(tmp_path, 10, ttl_seconds=60)
    fresh, old, busy = [await store.create(name, "") for name in ("fresh", "old", "busy")]
    for session in (old, busy):
        age(tmp_path, session.session_id, 120)
    leftover = tmp_path / f".{old.session_id}.json.abc.tmp"  # a crash's temporary
    leftover.write_text("{")
    os.utime(leftover, (time.time() - 7200, time.time() - 7200))
    async with store.lock(busy.session_id):  # a turn of this session is running
        assert await store.sweep() == 1
    assert sorted(os.listdir(tmp_path)) == sorted(f"{session.session_id}.json" for session in (fresh, busy))


async def test_the_session_count_follows_deletions_and_expiry(tmp_path: Path) -> None:
    store = SessionStore(tmp_path, 2, ttl_seconds=60)
    first, second = await store.create("1", ""), await store.create("2", "")
    with pytest.raises(ResourceExhausted, match="2 sessions"):
        await store.create("3", "")
    await store.delete(first.session_id)
    third = await store.create("3", "")
    (tmp_path / f"{third.session_id}.json").unlink()  # deleted by another gateway replica
    await store.create("4", "")  # at the limit, the directory is counted again
    age(tmp_path, second.session_id, 120)
    assert await store.sweep() == 1
    await store.create("5", "")


async def test_the_composition_root_sweeps_and_stops_sweeping_on_shutdown(tmp_path: Path) -> None:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level  # build() configures logging for a service process
    sessions_dir = tmp_path / "sessions"
    sessions_dir.mkdir()
    expired = sessions_dir / f"{'0' * 32}.json"
    expired.write_text(json.dumps(asdict(Session("0" * 32, "prompt"))))
    age(sessions_dir, "0" * 32, 120)
    argv = ["--sessions-dir", str(sessions_dir), "--session-ttl-seconds", "60", "--session-sweep-seconds", "0.05"]
    try:
        definition = await build(argv)
        for _ in range(100):
            if not expired.exists():
                break
            await asyncio.sleep(0.02)
        assert not expired.exists()
        sweeping = [task for task in asyncio.all_tasks() if "sweep_forever" in repr(task.get_coro())]
        assert len(sweeping) == 1
        await definition.on_shutdown()
        assert sweeping[0].done()
    finally:
        root.handlers[:], root.level = handlers, level
