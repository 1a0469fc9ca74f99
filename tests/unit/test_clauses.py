import pytest

from services.gateway.clauses import ClauseSplitter, looks_chinese, reply_language


def split(text: str, step: int = 3) -> list[str]:
    splitter = ClauseSplitter(first_min_chars=6, min_chars=24)
    clauses = []
    for index in range(0, len(text), step):
        clauses += splitter.push(text[index : index + step])
    return clauses + splitter.flush()


def test_first_clause_is_cut_early_at_a_comma_later_ones_at_sentence_ends() -> None:
    clauses = split("长城是中国古代的军事防御工程，全长两万多公里，是世界文化遗产。你想去看看吗？")
    assert clauses == ["长城是中国古代的军事防御工程，", "全长两万多公里，是世界文化遗产。", "你想去看看吗？"]


def test_decimal_points_do_not_end_a_sentence_but_full_stops_do() -> None:
    clauses = split("Pi is about 3.14 and e is 2.72. Both are irrational. Done")
    assert clauses == ["Pi is about 3.14 and e is 2.72.", "Both are irrational.", "Done"]


def test_punctuation_only_pieces_are_dropped_and_long_text_is_cut_at_spaces() -> None:
    assert split("。。！！") == []
    long_text = "word " * 60
    clauses = split(long_text, step=7)
    assert all(len(clause) <= 160 for clause in clauses) and " ".join(clauses).split() == long_text.split()


def test_language_detection() -> None:
    assert looks_chinese("你好，今天天气不错")
    assert looks_chinese("我喜欢Python")
    assert not looks_chinese("Hello there, 你")


@pytest.mark.parametrize(
    ("text", "language"),
    [
        ("こんにちは、今日はいい天気ですね。", "ja"),
        ("富士山は日本で一番高い山です。", "ja"),
        ("コーヒーをください", "ja"),
        ("ｺｰﾋｰ", "ja"),  # half-width katakana
        ("私はPythonが好きです", "ja"),
        ("你好，今天天气不错", "zh"),
        ("我喜欢Python", "zh"),
        ("長城很長", "zh"),  # kanji alone: Chinese
        ("Hello everyone, こんにちは", "en"),
        ("Hello there.", "en"),
        ("123 !!", "en"),
    ],
)
def test_reply_language(text: str, language: str) -> None:
    assert reply_language(text) == language
    assert looks_chinese(text) == (language == "zh")
