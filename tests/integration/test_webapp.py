"""The web app in a real browser: headless Chromium (the system package) with a WAV file as its microphone, against
the real HTTP service and the cluster behind it. Nothing is mocked: the page captures the fake microphone with an
AudioWorklet, streams it over the Realtime WebSocket, shows what the gateway heard and plays the reply with WebAudio;
the assertions read the counters the page keeps of the audio its clock actually played."""

from __future__ import annotations

import json
import os
import shutil
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import soundfile
from selenium import webdriver
from selenium.common.exceptions import TimeoutException, WebDriverException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import Select, WebDriverWait

from tools.cluster import LocalCluster, shared_data_dir
from tools.speech_check import character_error_rate

pytestmark = pytest.mark.integration

MANIFEST_TEXT = "那等我们到海洋馆之后，给妈妈买个礼物，好不好呀？"  # what Tingting_prompt.wav says
LEAD_SILENCE_SECONDS = 1.0
# Chromium replays the file in a loop unless told not to; the long tail keeps a replay (were "%noloop" ignored)
# from asking the question again while the test listens to the reply.
TAIL_SILENCE_SECONDS = 60.0
TURN_TIMEOUT_SECONDS = 240.0  # CPU models on shared cores: VAD end, whisper, llama.cpp's first clause, Piper


def browser_paths() -> tuple[str, str]:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    chromedriver = shutil.which("chromedriver")
    if not chromium or not chromedriver:
        pytest.fail(
            "the web app test needs Chromium and chromedriver from the system packages (Debian: chromium, "
            f"chromium-driver); found chromium={chromium}, chromedriver={chromedriver}. Run `make install`."
        )
    return chromium, chromedriver


@pytest.fixture(scope="module")
def microphone_wav(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The spoken question between silences, as the 16-bit PCM WAV Chromium's fake capture device reads."""
    samples, rate = soundfile.read(shared_data / "Tingting_prompt.wav", dtype="int16")
    if samples.ndim > 1:
        samples = samples.mean(axis=1).astype(np.int16)
    lead = np.zeros(int(LEAD_SILENCE_SECONDS * rate), np.int16)
    tail = np.zeros(int(TAIL_SILENCE_SECONDS * rate), np.int16)
    path = tmp_path_factory.mktemp("microphone") / "question.wav"
    soundfile.write(path, np.concatenate([lead, samples, tail]), rate, subtype="PCM_16")
    return path


@pytest.fixture(scope="module")
def shared_data() -> Path:  # module scope for microphone_wav (tests/conftest.py's is per test)
    directory = shared_data_dir()
    if not directory.is_dir():
        pytest.fail(f"the Step-Audio recordings are missing at {directory}: set STEPAUDIO_SHARED_DATA")
    return directory


@pytest.fixture
def browser(microphone_wav: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[WebDriver]:
    chromium, chromedriver = browser_paths()
    monkeypatch.setenv("SE_OFFLINE", "true")  # Selenium Manager must never download a driver or browser
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in (
        "--headless=new",
        "--window-size=1280,1100",
        "--disable-dev-shm-usage",
        "--use-fake-ui-for-media-stream",  # grant the microphone without a prompt
        "--use-fake-device-for-media-stream",
        f"--use-file-for-fake-audio-capture={microphone_wav}%noloop",
        "--autoplay-policy=no-user-gesture-required",
    ):
        options.add_argument(flag)
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        options.add_argument("--no-sandbox")  # Chromium's sandbox refuses to run as root (containers, CI)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(executable_path=chromedriver))
    try:
        yield driver
    finally:
        driver.quit()


def artifact_paths(tmp_path: Path, name: str) -> list[Path]:
    paths = [tmp_path / "screenshots" / name]
    if artifacts := os.environ.get("STEPAUDIO_ARTIFACTS_DIR"):
        paths.append(Path(artifacts) / name)
    return paths


def save_screenshot(driver: WebDriver, tmp_path: Path, name: str) -> None:
    for path in artifact_paths(tmp_path, name):
        path.parent.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(path))
        print(f"screenshot: {path}")


@contextmanager
def screenshot_on_failure(driver: WebDriver, tmp_path: Path, name: str) -> Iterator[None]:
    """A screenshot, the page's state and the browser console when the block fails."""
    try:
        yield
    except BaseException:
        try:
            save_screenshot(driver, tmp_path, f"FAILED-{name}")
            print("page state:", json.dumps(page_state(driver)))
            for entry in driver.get_log("browser"):
                print("console:", entry.get("level"), entry.get("message"))
        except WebDriverException as error:
            print(f"could not capture the failure: {error}")
        raise


def page_state(driver: WebDriver) -> dict:
    return driver.execute_script("return {...document.getElementById('main').dataset}")


def wait_for(driver: WebDriver, what: str, condition: Callable[[WebDriver], object], timeout: float) -> object:
    try:
        return WebDriverWait(driver, timeout, poll_frequency=0.25).until(condition)
    except TimeoutException:
        state = page_state(driver)
        raise AssertionError(f"timed out after {timeout:g} s waiting for {what}; page state {state}") from None


def voices_listed(driver: WebDriver) -> bool:
    return len(Select(driver.find_element(By.ID, "voice")).options) > 1


def finished_user_transcript(driver: WebDriver) -> str | None:
    entries = driver.find_elements(By.CSS_SELECTOR, "#transcript li.user:not(.pending) .text")
    return entries[0].text if entries else None


def test_conversation_page_hears_the_microphone_and_plays_the_spoken_reply(
    cluster: LocalCluster, browser: WebDriver, tmp_path: Path
) -> None:
    browser.get(f"{cluster.http_url}/")
    with screenshot_on_failure(browser, tmp_path, "conversation.png"):
        wait_for(browser, "the voice list", voices_listed, 30)
        assert page_state(browser)["state"] == "idle"
        browser.find_element(By.ID, "mic-button").click()
        microphone = browser.find_element(By.ID, "mic-button")
        wait_for(browser, "the microphone to stream", lambda d: microphone.get_attribute("aria-pressed") == "true", 30)
        assert browser.find_element(By.ID, "error").text == ""

        transcript = wait_for(browser, "the user transcript", finished_user_transcript, TURN_TIMEOUT_SECONDS)
        assert character_error_rate(MANIFEST_TEXT, transcript) < 0.35, transcript

        def reply_played(driver: WebDriver) -> bool:
            return float(page_state(driver)["replyAudioPlayedSeconds"]) > 0.5

        wait_for(browser, "0.5 s of reply audio to play", reply_played, TURN_TIMEOUT_SECONDS)
        state = page_state(browser)
        assert state["audioContextState"] == "running"
        assert float(state["replyAudioScheduledSeconds"]) >= float(state["replyAudioPlayedSeconds"])
        reply = browser.find_element(By.CSS_SELECTOR, "#transcript li.assistant .text").text
        assert reply.strip(), "reply audio played but no reply text was shown"
        assert browser.find_element(By.ID, "error").text == ""
        # The transcript is announced to screen readers.
        log = browser.find_element(By.ID, "transcript")
        assert log.get_attribute("role") == "log" and log.get_attribute("aria-live") == "polite"
    save_screenshot(browser, tmp_path, "conversation.png")

    with screenshot_on_failure(browser, tmp_path, "conversation-barge-in.png"):
        # Barge-in: a new capture replays the file from its start, so reopening the microphone while the reply's
        # audio is queued asks the question again over it. The page must cut the playback, and the new utterance be
        # heard and answered.
        outcome = wait_for(browser, "reply audio queued to speak over", interruptible, TURN_TIMEOUT_SECONDS)
        assert outcome == "queued", f"the reply was too short to speak over: {page_state(browser)}"
        microphone.click()  # stop
        microphone.click()  # start: the question again
        wait_for(browser, "the reply's playback to be cut", lambda d: page_state(d)["bargeIns"] == "1", 60)
        cut = page_state(browser)
        assert float(cut["replyAudioScheduledSeconds"]) - float(cut["replyAudioPlayedSeconds"]) > 0.2, cut
        first_reply = browser.find_element(By.CSS_SELECTOR, "#transcript li.assistant")
        assert "interrupted" in first_reply.get_attribute("class").split()

        def second_transcript(driver: WebDriver) -> str | None:
            entries = driver.find_elements(By.CSS_SELECTOR, "#transcript li.user:not(.pending) .text")
            return entries[1].text if len(entries) > 1 else None

        repeated = wait_for(browser, "the second user transcript", second_transcript, TURN_TIMEOUT_SECONDS)
        assert character_error_rate(MANIFEST_TEXT, repeated) < 0.35, repeated
        assert browser.find_element(By.ID, "error").text == ""
    save_screenshot(browser, tmp_path, "conversation-barge-in.png")

    with screenshot_on_failure(browser, tmp_path, "conversation-typed.png"):
        # A typed message in the same conversation, sent while the answer to the repeated question is on its way:
        # it replaces that answer (typing cuts a reply short, as speaking does) and is answered aloud.
        message = browser.find_element(By.ID, "text-input")
        message.send_keys("请用一句话介绍一下长城。", Keys.ENTER)  # the keyboard alone sends it
        typed = browser.find_elements(By.CSS_SELECTOR, "#transcript li.user .text")[-1]
        assert typed.text == "请用一句话介绍一下长城。"
        played_before = float(page_state(browser)["replyAudioPlayedSeconds"])

        def typed_reply_played(driver: WebDriver) -> bool:
            replies = driver.find_elements(By.CSS_SELECTOR, "#transcript li.assistant")
            state = page_state(driver)
            return len(replies) == 3 and float(state["replyAudioPlayedSeconds"]) > played_before + 0.5

        wait_for(browser, "the reply to the typed message to play", typed_reply_played, TURN_TIMEOUT_SECONDS)
        assert browser.find_elements(By.CSS_SELECTOR, "#transcript li.assistant .text")[-1].text.strip()
        assert browser.find_element(By.ID, "error").text == ""
    save_screenshot(browser, tmp_path, "conversation-typed.png")


def interruptible(driver: WebDriver) -> str | None:
    """ "queued" once 2 s of reply audio wait ahead of the clock; "over" if every reply finished playing first."""
    state = page_state(driver)
    if float(state["replyAudioBufferedSeconds"]) >= 2.0:
        return "queued"
    if state["state"] not in ("replying", "thinking", "user-speaking"):
        return "over"
    return None


def test_speech_page_synthesises_plays_and_offers_the_download(
    cluster: LocalCluster, browser: WebDriver, tmp_path: Path
) -> None:
    browser.get(f"{cluster.http_url}/speech")
    with screenshot_on_failure(browser, tmp_path, "speech.png"):
        wait_for(browser, "the voice list", voices_listed, 30)
        text = browser.find_element(By.ID, "speech-input")
        text.clear()
        text.send_keys("The weather is lovely today, so we are going for a walk in the park.")
        Select(browser.find_element(By.ID, "voice")).select_by_value("en-joe")
        for fmt in ("mp3", "pcm"):  # a compressed file on the <audio> element; raw PCM streamed into WebAudio
            Select(browser.find_element(By.ID, "format")).select_by_value(fmt)
            browser.find_element(By.ID, "speak-button").click()
            wait_for(browser, f"the {fmt} speech to play to its end", lambda d: page_state(d)["state"] == "played", 120)
            state = page_state(browser)
            assert float(state["playedSeconds"]) > 2.0, state  # about 4 s of speech
            assert int(state["audioBytes"]) > 1000, state
            download = browser.find_element(By.ID, "download")
            assert download.is_displayed() and download.get_attribute("download") == f"speech.{fmt}"
            assert browser.find_element(By.ID, "speech-error").text == ""
        duration = browser.execute_script("return document.getElementById('speech-audio').duration")
        assert 2.0 < duration < 15.0, duration  # the streamed PCM, kept as a WAV for replay

        # Every other format starts playing (decoded by the browser, or by the page for G.711).
        for fmt, extension in (("opus", "ogg"), ("aac", "aac"), ("flac", "flac"), ("wav", "wav"), ("mulaw", "ulaw"),
                               ("alaw", "alaw")):  # fmt: skip
            Select(browser.find_element(By.ID, "format")).select_by_value(fmt)
            browser.find_element(By.ID, "speak-button").click()

            def playing(driver: WebDriver) -> bool:
                state = page_state(driver)
                return state["state"] in ("playing", "played") and float(state["playedSeconds"]) > 0.3

            wait_for(browser, f"the {fmt} speech to play", playing, 120)
            assert browser.find_element(By.ID, "download").get_attribute("download") == f"speech.{extension}"
            assert browser.find_element(By.ID, "speech-error").text == "", fmt
    save_screenshot(browser, tmp_path, "speech.png")


def test_speech_page_clones_from_an_upload_or_says_why_not(
    cluster: LocalCluster, browser: WebDriver, shared_data: Path, tmp_path: Path
) -> None:
    browser.get(f"{cluster.http_url}/speech")
    with screenshot_on_failure(browser, tmp_path, "clone.png"):
        wait_for(browser, "the voice list", voices_listed, 30)
        browser.find_element(By.ID, "clone-id").send_keys("webapp-test-voice")
        browser.find_element(By.ID, "clone-languages").send_keys("zh")
        browser.find_element(By.ID, "clone-transcript").send_keys(MANIFEST_TEXT)
        browser.find_element(By.ID, "clone-file").send_keys(str(shared_data / "Tingting_prompt.wav"))
        assert "Tingting_prompt.wav" in browser.find_element(By.ID, "clone-source").text
        browser.find_element(By.ID, "clone-button").click()

        def answered(driver: WebDriver) -> str | None:
            error = driver.find_element(By.ID, "clone-error").text
            status = driver.find_element(By.ID, "clone-status").text
            return error or (status if status.startswith("Cloned") else None)

        outcome = wait_for(browser, "the clone request to be answered", answered, 120)
        with urllib.request.urlopen(f"{cluster.http_url}/v1/voices", timeout=30) as response:
            engines = {voice["engine"] for voice in json.load(response)["data"]}
        if engines == {"embedded"}:
            # The embedded TTS engine (Piper) cannot clone: the gateway's refusal reaches the page in words.
            assert outcome.startswith("Could not clone the voice:") and "cannot clone voices" in outcome, outcome
        else:
            assert outcome.startswith("Cloned voice"), outcome
            cloned = browser.find_element(By.ID, "cloned-voices")
            assert "webapp-test-voice" in cloned.text
            cloned.find_element(By.CSS_SELECTOR, "button.danger").click()
            wait_for(browser, "the voice to be deleted", lambda d: "webapp-test-voice" not in cloned.text, 60)
    save_screenshot(browser, tmp_path, "clone.png")
