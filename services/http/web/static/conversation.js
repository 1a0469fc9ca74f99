// The conversation page: microphone → Realtime WebSocket (server VAD turns, barge-in), typed messages, the live
// transcript, and the streamed spoken reply played gaplessly with WebAudio.

import {
  DIALECTS,
  EMOTIONS,
  STYLES,
  fillSelect,
  fillVoiceSelect,
  listVoices,
  showRangeValue,
} from "./api.js";
import { openMicrophone } from "./mic.js";
import { base64ToBytes, int16ToBase64, pcm16ToFloat32 } from "./pcm.js";
import { StreamPlayer } from "./player.js";
import { RealtimeClient, realtimeUrl } from "./realtime.js";

const WIRE_RATE = 24000; // pcm16 of the Realtime protocol, both ways
const PLAYBACK_REPORT_MS = 250; // how often the server hears how much of a streaming reply was played

const $ = (id) => document.getElementById(id);
const main = $("main");
const ui = {
  micButton: $("mic-button"),
  micLevel: $("mic-level"),
  status: $("status"),
  error: $("error"),
  transcript: $("transcript"),
  textForm: $("text-form"),
  textInput: $("text-input"),
  voice: $("voice"),
  emotion: $("emotion"),
  dialect: $("dialect"),
  style: $("style"),
  speed: $("speed"),
  language: $("language"),
  settingsNote: $("settings-note"),
};

let context = null; // one AudioContext for the microphone and playback
let player = null;
let client = null;
let connecting = null;
let microphone = null;
// response id → {responseId, entry, text, itemId, playedAtStart (the player's played seconds where its audio
// begins), ignoreAudio}, for the replies still streaming
const replies = new Map();
let currentReply = null; // the response being streamed
let audibleReply = null; // the reply whose audio the player holds (it may have finished streaming)
let lastPlaybackReport = 0;
const userEntries = new Map(); // item id → transcript entry of a spoken turn

// --- page state -------------------------------------------------------------------------------------------------

function setState(state) {
  main.dataset.state = state;
}

function say(text) {
  ui.status.textContent = text;
}

function fail(error) {
  ui.error.textContent = error instanceof Error ? error.message : String(error);
}

function settle() {
  // The state once nothing is being said or played.
  if (currentReply || player?.isPlaying) return;
  if (["thinking", "user-speaking"].includes(main.dataset.state)) return;
  setState(microphone ? "listening" : client?.isOpen ? "ready" : "idle");
  if (microphone) say("Listening…");
}

function countAudio() {
  main.dataset.audioContextState = context ? context.state : "none";
  if (!player) return;
  main.dataset.replyAudioScheduledSeconds = player.scheduledSeconds.toFixed(3);
  main.dataset.replyAudioPlayedSeconds = player.playedSecondsNow.toFixed(3);
  main.dataset.replyAudioBufferedSeconds = player.bufferedSeconds.toFixed(3);
  if (!player.isPlaying) settle();
}

// The counters follow the clock between chunks, and the server hears how much of the reply streaming now was
// played (so a reply cut short by barge-in is kept in the history as far as the user heard it).
function whilePlaying() {
  if (!player.isPlaying) return;
  countAudio();
  const reply = audibleReply;
  const now = performance.now();
  if (reply?.itemId && replies.has(reply.responseId) && now - lastPlaybackReport >= PLAYBACK_REPORT_MS) {
    lastPlaybackReport = now;
    reportPlayback(reply);
  }
}

function reportPlayback(reply) {
  const heard = Math.max(0, player.playedSecondsNow - reply.playedAtStart);
  client?.send({
    type: "conversation.item.truncate",
    item_id: reply.itemId,
    content_index: 0,
    audio_end_ms: Math.round(heard * 1000),
  });
}

async function audioContext() {
  if (!context) {
    context = new AudioContext({ latencyHint: "interactive" });
    context.onstatechange = countAudio;
    player = new StreamPlayer(context, { onProgress: countAudio });
    setInterval(whilePlaying, 100);
  }
  if (context.state === "suspended") await context.resume();
  countAudio();
  return context;
}

// --- the transcript ---------------------------------------------------------------------------------------------

function addEntry(role, text, { pending = false } = {}) {
  const entry = document.createElement("li");
  entry.className = role + (pending ? " pending" : "");
  const who = document.createElement("span");
  who.className = "who";
  who.textContent = role === "user" ? "You" : "Assistant";
  const body = document.createElement("span");
  body.className = "text";
  body.textContent = text;
  entry.append(who, body);
  ui.transcript.append(entry);
  entry.scrollIntoView({ block: "nearest" });
  return entry;
}

function setEntryText(entry, text) {
  entry.classList.remove("pending");
  entry.querySelector(".text").textContent = text;
  entry.scrollIntoView({ block: "nearest" });
}

// --- the Realtime connection ------------------------------------------------------------------------------------

function sessionSettings() {
  const controls = { emotion: ui.emotion.value, language: ui.dialect.value, style: ui.style.value };
  return {
    ...(ui.voice.value ? { voice: ui.voice.value } : {}), // empty until the voices are listed
    speed: Number(ui.speed.value),
    modalities: ["text", "audio"],
    input_audio_format: "pcm16",
    output_audio_format: "pcm16",
    input_audio_transcription: { language: ui.language.value },
    turn_detection: { type: "server_vad", interrupt_response: true },
    // Not part of OpenAI's protocol: the cluster's typed voice controls (VoiceControls). A server that does not
    // apply them leaves them out of session.updated, and the page says so.
    voice_controls: controls,
  };
}

async function applySettings() {
  if (!client?.isOpen) return;
  const session = await client.update(sessionSettings());
  const controlsApplied = session && "voice_controls" in session;
  for (const select of [ui.emotion, ui.dialect, ui.style]) select.disabled = !controlsApplied;
  ui.settingsNote.textContent = controlsApplied
    ? "Changes apply from the next utterance."
    : "Changes apply from the next utterance. This server does not apply emotion, dialect or style to " +
      "conversation replies; the Speech page has them.";
}

function connect() {
  if (client?.isOpen) return Promise.resolve(client);
  connecting ??= (async () => {
    setState("connecting");
    say("Connecting…");
    const realtime = new RealtimeClient(realtimeUrl());
    listen(realtime);
    await realtime.connect();
    client = realtime;
    await applySettings();
    setState("ready");
    say("Connected.");
    return realtime;
  })().finally(() => (connecting = null));
  return connecting;
}

function listen(realtime) {
  realtime
    .on("input_audio_buffer.speech_started", (event) => {
      bargeIn();
      userEntries.set(event.item_id, addEntry("user", "…", { pending: true }));
      setState("user-speaking");
      say("Hearing you…");
    })
    .on("input_audio_buffer.speech_stopped", () => {
      setState("thinking");
      say("Thinking…");
    })
    .on("conversation.item.input_audio_transcription.completed", (event) => {
      const entry = userEntries.get(event.item_id) ?? addEntry("user", "");
      userEntries.delete(event.item_id);
      setEntryText(entry, event.transcript || "(nothing recognised)");
      entry.dataset.itemId = event.item_id;
      main.dataset.userTurns = String(Number(main.dataset.userTurns) + 1);
    })
    .on("response.created", (event) => startReply(event.response.id))
    .on("conversation.item.created", (event) => {
      const reply = currentReply && replies.get(currentReply);
      if (reply && event.item?.role === "assistant") reply.itemId = event.item.id;
    })
    .on("response.audio_transcript.delta", (event) => appendReplyText(event.response_id, event.delta))
    .on("response.text.delta", (event) => appendReplyText(event.response_id, event.delta))
    .on("response.audio.delta", (event) => playReplyAudio(event.response_id, event.delta))
    .on("response.done", (event) => finishReply(event.response))
    .on("error", (event) => fail(event.error?.message ?? "the server reported an error"))
    .on("close", (event) => {
      if (client === realtime) client = null;
      stopTalking();
      for (const id of [...replies.keys()]) finishReply({ id, status: "cancelled" });
      setState("idle");
      say(event.code === 1000 ? "Disconnected." : `Disconnected (${event.code} ${event.reason || "connection lost"}).`);
    });
}

// --- replies ----------------------------------------------------------------------------------------------------

function startReply(responseId) {
  const entry = addEntry("assistant", "");
  entry.setAttribute("aria-busy", "true"); // screen readers read the reply once, when it is complete
  entry.dataset.responseId = responseId;
  replies.set(responseId, { responseId, entry, text: "", itemId: null, playedAtStart: 0, ignoreAudio: false });
  currentReply = responseId;
  setState("replying");
  say("Replying…");
}

function appendReplyText(responseId, delta) {
  const reply = replies.get(responseId);
  if (!reply) return;
  reply.text += delta;
  setEntryText(reply.entry, reply.text);
}

function playReplyAudio(responseId, base64) {
  const reply = replies.get(responseId);
  if (!reply || reply.ignoreAudio || !player) return;
  if (audibleReply !== reply) {
    audibleReply = reply;
    reply.playedAtStart = player.playedSecondsNow + player.bufferedSeconds; // where its first chunk will start
  }
  player.enqueue(pcm16ToFloat32(base64ToBytes(base64)), WIRE_RATE);
}

function finishReply(response) {
  const reply = replies.get(response.id);
  if (!reply) return;
  replies.delete(response.id);
  if (currentReply === response.id) currentReply = null;
  reply.entry.removeAttribute("aria-busy");
  reply.entry.dataset.status = response.status;
  if (response.status === "cancelled") reply.entry.classList.add("interrupted");
  if (response.status === "failed") fail(response.status_details?.error?.message ?? "the reply failed");
  if (!reply.text) setEntryText(reply.entry, response.status === "completed" ? "(no reply)" : "");
  if (response.status === "completed") {
    main.dataset.repliesCompleted = String(Number(main.dataset.repliesCompleted) + 1);
  }
  settle();
}

// The user spoke (or typed) over a reply: silence it now, and tell the server how much of it was heard (its
// history keeps that much). Replies still streaming are cancelled by the server; their late audio is dropped.
function bargeIn() {
  for (const [, reply] of replies) reply.ignoreAudio = true;
  if (!player?.isPlaying) return;
  const reply = audibleReply;
  if (reply.itemId) reportPlayback(reply);
  player.stop();
  reply.entry.classList.add("interrupted");
  main.dataset.bargeIns = String(Number(main.dataset.bargeIns) + 1);
}

// --- microphone and text ----------------------------------------------------------------------------------------

async function startTalking() {
  ui.micButton.disabled = true;
  ui.error.textContent = "";
  try {
    await audioContext();
    const realtime = await connect();
    microphone = await openMicrophone(
      context,
      (pcm, peak) => {
        ui.micLevel.value = peak;
        realtime.send({ type: "input_audio_buffer.append", audio: int16ToBase64(pcm) });
      },
      { sampleRate: WIRE_RATE },
    );
    ui.micButton.textContent = "Stop talking";
    ui.micButton.setAttribute("aria-pressed", "true");
    setState("listening");
    say(`Listening (${microphone.label})…`);
  } catch (error) {
    fail(error);
    setState("error");
  } finally {
    ui.micButton.disabled = false;
  }
}

function stopTalking() {
  if (!microphone) return;
  microphone.close();
  microphone = null;
  ui.micLevel.value = 0;
  if (main.dataset.state === "user-speaking") client?.send({ type: "input_audio_buffer.commit" }); // answer it
  ui.micButton.textContent = "Start talking";
  ui.micButton.setAttribute("aria-pressed", "false");
  settle();
}

async function sendText(text) {
  ui.error.textContent = "";
  await audioContext();
  const realtime = await connect();
  if (currentReply) {
    bargeIn();
    realtime.send({ type: "response.cancel" });
  }
  addEntry("user", text);
  main.dataset.userTurns = String(Number(main.dataset.userTurns) + 1);
  realtime.send({
    type: "conversation.item.create",
    item: { type: "message", role: "user", content: [{ type: "input_text", text }] },
  });
  realtime.send({ type: "response.create" });
  setState("thinking");
  say("Thinking…");
}

// --- start-up ---------------------------------------------------------------------------------------------------

async function loadVoices() {
  try {
    fillVoiceSelect(ui.voice, await listVoices(), "Chosen by the reply's language");
  } catch (error) {
    fail(`Could not list the voices: ${error.message}`);
  }
}

function wireUp() {
  fillSelect(ui.emotion, EMOTIONS);
  fillSelect(ui.dialect, DIALECTS);
  fillSelect(ui.style, STYLES);
  showRangeValue(ui.speed, $("speed-value"));
  ui.micButton.addEventListener("click", () => (microphone ? stopTalking() : startTalking()));
  ui.textForm.addEventListener("submit", (event) => {
    event.preventDefault();
    const text = ui.textInput.value.trim();
    if (!text) return;
    ui.textInput.value = "";
    sendText(text).catch((error) => {
      fail(error);
      setState("error");
    });
  });
  for (const control of [ui.voice, ui.emotion, ui.dialect, ui.style, ui.speed, ui.language]) {
    control.addEventListener("change", () => applySettings().catch(fail));
  }
  window.addEventListener("pagehide", () => {
    stopTalking();
    client?.close();
  });
  loadVoices();
}

wireUp();
