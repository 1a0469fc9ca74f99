"""How much of a session's history goes into a prompt.

The chat stage rejects a prompt longer than its context window, so a session that only grew would end up failing
every turn. The prompt keeps the system prompt and the current user turn, and as many of the newest earlier turns
as fit: at most ``max_history_turns`` exchanges and ``max_history_chars`` characters, and within the chat stage's
context window (``max_context_tokens`` from its GetEngineInfo) less the tokens kept for the reply. Tokens are
estimated from characters (``chars_per_token``; 1.0 is safe for Chinese, where a character is about a token, and
generous for English, about 4) plus a fixed cost per message for the chat template; ``<audio_N>`` ids count one
token each.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from services.gateway.sessions import Turn

MESSAGE_OVERHEAD_TOKENS = 8  # role markers and separators a chat template adds around each message
_AUDIO_TOKEN = "<audio_"


@dataclass(frozen=True)
class HistoryBudget:
    max_turns: int  # exchanges (user + assistant)
    max_chars: int
    max_tokens: int | None  # tokens left for history in the context window; None: not known
    chars_per_token: float


def estimate_tokens(text: str, chars_per_token: float, audio_tokens: str = "") -> int:
    """Tokens one message costs: its text by the characters-per-token estimate, its audio ids one each."""
    return math.ceil(len(text) / chars_per_token) + audio_tokens.count(_AUDIO_TOKEN) + MESSAGE_OVERHEAD_TOKENS


def fit_history(history: list[Turn], budget: HistoryBudget) -> list[Turn]:
    """The newest turns within the budget, oldest first, starting with a user turn."""
    kept: list[Turn] = []
    chars = tokens = 0
    for turn in reversed(history[-2 * budget.max_turns :] if budget.max_turns else []):
        if not turn.text.strip():
            continue
        chars += len(turn.text)
        tokens += estimate_tokens(turn.text, budget.chars_per_token)
        if chars > budget.max_chars or (budget.max_tokens is not None and tokens > budget.max_tokens):
            break
        kept.append(turn)
    kept.reverse()
    while kept and kept[0].speaker != "user":  # a reply without its question would confuse the model
        kept.pop(0)
    return kept
