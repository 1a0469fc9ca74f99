// The speech page: text → speech (POST /v1/audio/speech) with every control and format, played and downloadable;
// voice cloning from an uploaded or recorded clip (POST /v1/voices), and deleting cloned voices.

import {
  DIALECTS,
  EMOTIONS,
  STYLES,
  deleteVoice,
  errorMessage,
  fillSelect,
  fillVoiceSelect,
  instructionsFor,
  listVoices,
  showRangeValue,
  voiceLabel,
} from "./api.js";
import { microphoneProblem } from "./mic.js";
import { aLawToFloat32, float32ToWav, muLawToFloat32, pcm16ToFloat32 } from "./pcm.js";
import { StreamPlayer } from "./player.js";

const MAX_RECORDING_SECONDS = 30; // the longest clip a voice prompt may be
// Raw formats carry no header: the page decodes them itself and plays them as they arrive.
const RAW_FORMATS = {
  pcm: { sampleRate: 24000, bytesPerSample: 2, decode: pcm16ToFloat32 }, // OpenAI's pcm: 24 kHz (HTTP default)
  mulaw: { sampleRate: 8000, bytesPerSample: 1, decode: muLawToFloat32 },
  alaw: { sampleRate: 8000, bytesPerSample: 1, decode: aLawToFloat32 },
};
const EXTENSIONS = { mp3: "mp3", opus: "ogg", aac: "aac", flac: "flac", wav: "wav", pcm: "pcm", mulaw: "ulaw", alaw: "alaw" };

const $ = (id) => document.getElementById(id);
const main = $("main");
const ui = {
  speechForm: $("speech-form"),
  input: $("speech-input"),
  voice: $("voice"),
  emotion: $("emotion"),
  dialect: $("dialect"),
  style: $("style"),
  speed: $("speed"),
  format: $("format"),
  instructionsHint: $("instructions-hint"),
  speakButton: $("speak-button"),
  download: $("download"),
  speechStatus: $("speech-status"),
  speechError: $("speech-error"),
  audio: $("speech-audio"),
  cloneForm: $("clone-form"),
  cloneId: $("clone-id"),
  cloneName: $("clone-name"),
  cloneLanguages: $("clone-languages"),
  cloneTranscript: $("clone-transcript"),
  cloneFile: $("clone-file"),
  recordButton: $("record-button"),
  cloneSource: $("clone-source"),
  clonePreview: $("clone-preview"),
  cloneButton: $("clone-button"),
  cloneStatus: $("clone-status"),
  cloneError: $("clone-error"),
  clonedVoices: $("cloned-voices"),
  noCloned: $("no-cloned"),
};

let context = null;
let player = null;
let downloadUrl = null;
let previewUrl = null;
let cloneClip = null; // {blob, name}: the recording to clone from
let recorder = null;

// --- text to speech ---------------------------------------------------------------------------------------------

function controls() {
  return { emotion: ui.emotion.value, dialect: ui.dialect.value, style: ui.style.value };
}

function showInstructions() {
  const instructions = instructionsFor(controls());
  ui.instructionsHint.textContent = instructions
    ? `Sent as instructions: “${instructions}”.`
    : "No emotion, dialect or style: the voice's own delivery.";
}

function speechRequest() {
  const body = {
    model: "step-audio-tts",
    input: ui.input.value,
    voice: ui.voice.value,
    response_format: ui.format.value,
    speed: Number(ui.speed.value),
  };
  const instructions = instructionsFor(controls());
  if (instructions) body.instructions = instructions;
  return body;
}

function setSpeechState(state) {
  main.dataset.state = state;
}

async function speak(event) {
  event.preventDefault();
  ui.speechError.textContent = "";
  ui.speakButton.disabled = true;
  resetOutput();
  setSpeechState("synthesising");
  ui.speechStatus.textContent = "Synthesising…";
  const format = ui.format.value;
  const started = performance.now();
  if (RAW_FORMATS[format]) {
    // Made (or resumed) while the click still counts as the user's gesture: browsers only let audio start then.
    context ??= new AudioContext();
    context.resume();
  }
  try {
    const response = await fetch("/v1/audio/speech", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(speechRequest()),
    });
    if (!response.ok) throw new Error(await errorMessage(response));
    const parts = [];
    let bytes = 0;
    const raw = RAW_FORMATS[format];
    const stream = raw ? await rawStream(raw) : null;
    const reader = response.body.getReader();
    for (let read = await reader.read(); !read.done; read = await reader.read()) {
      if (bytes === 0) main.dataset.firstAudioMs = String(Math.round(performance.now() - started));
      parts.push(read.value);
      bytes += read.value.length;
      main.dataset.audioBytes = String(bytes);
      stream?.push(read.value);
    }
    const blob = new Blob(parts, { type: response.headers.get("Content-Type") ?? "application/octet-stream" });
    offerDownload(blob, format);
    if (stream) {
      ui.audio.src = URL.createObjectURL(float32ToWav(stream.finish(), raw.sampleRate)); // to replay
      ui.speechStatus.textContent = `Playing ${format} as it arrived (${formatBytes(bytes)}).`;
    } else {
      ui.audio.src = URL.createObjectURL(blob);
      ui.speechStatus.textContent = `Received ${formatBytes(bytes)} of ${format}; playing.`;
      await ui.audio.play().catch((error) => {
        if (error.name !== "NotAllowedError") throw error;
        ui.speechStatus.textContent = `Received ${formatBytes(bytes)} of ${format}: press play to listen.`;
      });
    }
  } catch (error) {
    ui.speechError.textContent = error.message;
    ui.speechStatus.textContent = "";
    setSpeechState("error");
  } finally {
    ui.speakButton.disabled = false;
  }
}

// Plays a raw format chunk by chunk while it downloads (samples split across chunks are carried over).
async function rawStream({ sampleRate, bytesPerSample, decode }) {
  if (context.state === "suspended") await context.resume();
  player?.stop();
  player = new StreamPlayer(context, {
    onProgress: (p) => {
      main.dataset.playedSeconds = p.playedSeconds.toFixed(3);
      if (p.isPlaying) setSpeechState("playing");
      else if (main.dataset.state === "playing") setSpeechState("played");
    },
  });
  let carry = new Uint8Array(0);
  const decoded = [];
  return {
    push(bytes) {
      const joined = new Uint8Array(carry.length + bytes.length);
      joined.set(carry);
      joined.set(bytes, carry.length);
      const whole = joined.length - (joined.length % bytesPerSample);
      carry = joined.slice(whole);
      const samples = decode(joined.subarray(0, whole));
      decoded.push(samples);
      player.enqueue(samples, sampleRate);
    },
    finish() {
      const all = new Float32Array(decoded.reduce((n, part) => n + part.length, 0));
      let offset = 0;
      for (const part of decoded) {
        all.set(part, offset);
        offset += part.length;
      }
      return all;
    },
  };
}

function resetOutput() {
  player?.stop();
  ui.audio.pause();
  if (ui.audio.src) URL.revokeObjectURL(ui.audio.src);
  ui.audio.removeAttribute("src");
  main.dataset.playedSeconds = "0";
  main.dataset.audioBytes = "0";
  main.dataset.firstAudioMs = "";
  ui.download.hidden = true;
}

function offerDownload(blob, format) {
  if (downloadUrl) URL.revokeObjectURL(downloadUrl);
  downloadUrl = URL.createObjectURL(blob);
  ui.download.href = downloadUrl;
  ui.download.download = `speech.${EXTENSIONS[format] ?? format}`;
  ui.download.textContent = `Download (${format}, ${formatBytes(blob.size)})`;
  ui.download.hidden = false;
}

function formatBytes(bytes) {
  return bytes < 1024 * 1024 ? `${(bytes / 1024).toFixed(1)} kB` : `${(bytes / 1024 / 1024).toFixed(2)} MB`;
}

function watchAudioElement() {
  ui.audio.addEventListener("playing", () => setSpeechState("playing"));
  ui.audio.addEventListener("timeupdate", () => {
    const played = Math.max(Number(main.dataset.playedSeconds), ui.audio.currentTime);
    main.dataset.playedSeconds = played.toFixed(3);
  });
  ui.audio.addEventListener("ended", () => setSpeechState("played"));
  ui.audio.addEventListener("error", () => {
    if (!ui.audio.getAttribute("src")) return;
    ui.speechError.textContent = "This browser cannot play that format; download it instead.";
    setSpeechState("error");
  });
}

// --- voices -----------------------------------------------------------------------------------------------------

async function refreshVoices() {
  try {
    const listed = await listVoices();
    fillVoiceSelect(ui.voice, listed, "Default voice");
    showClonedVoices(listed.voices.filter((voice) => voice.cloned));
  } catch (error) {
    ui.speechError.textContent = `Could not list the voices: ${error.message}`;
  }
}

function showClonedVoices(voices) {
  ui.noCloned.hidden = voices.length > 0;
  ui.clonedVoices.replaceChildren(
    ...voices.map((voice) => {
      const item = document.createElement("li");
      const label = document.createElement("span");
      label.textContent = voiceLabel(voice);
      const remove = document.createElement("button");
      remove.type = "button";
      remove.className = "danger";
      remove.textContent = "Delete";
      remove.setAttribute("aria-label", `Delete voice ${voice.name}`);
      remove.addEventListener("click", () => removeVoice(voice, remove));
      item.append(label, remove);
      return item;
    }),
  );
}

async function removeVoice(voice, button) {
  button.disabled = true;
  ui.cloneError.textContent = "";
  try {
    await deleteVoice(voice.id);
    ui.cloneStatus.textContent = `Deleted voice ${voice.name}.`;
    await refreshVoices();
  } catch (error) {
    ui.cloneError.textContent = error.message;
    button.disabled = false;
  }
}

// --- cloning ----------------------------------------------------------------------------------------------------

function chooseClip(blob, name, description) {
  cloneClip = { blob, name };
  if (previewUrl) URL.revokeObjectURL(previewUrl);
  previewUrl = URL.createObjectURL(blob);
  ui.clonePreview.src = previewUrl;
  ui.clonePreview.hidden = false;
  ui.cloneSource.textContent = `Using ${description}.`;
}

async function toggleRecording() {
  if (recorder) {
    recorder.stop();
    return;
  }
  ui.cloneError.textContent = "";
  try {
    if (!navigator.mediaDevices?.getUserMedia) {
      throw new Error("this browser gives no microphone here (it needs https, or http on localhost)");
    }
    const stream = await navigator.mediaDevices.getUserMedia({ audio: { channelCount: 1 } }).catch((error) => {
      throw new Error(microphoneProblem(error));
    });
    const chunks = [];
    const started = performance.now();
    recorder = new MediaRecorder(stream);
    recorder.ondataavailable = (event) => chunks.push(event.data);
    recorder.onstop = () => {
      stream.getTracks().forEach((track) => track.stop());
      const seconds = (performance.now() - started) / 1000;
      const type = recorder.mimeType || "audio/webm";
      const extension = type.includes("mp4") ? "m4a" : type.includes("ogg") ? "ogg" : "webm";
      chooseClip(new Blob(chunks, { type }), `recording.${extension}`, `a recording of ${seconds.toFixed(1)} s`);
      clearTimeout(recorder.limit);
      recorder = null;
      ui.recordButton.textContent = "Record";
      ui.recordButton.setAttribute("aria-pressed", "false");
    };
    recorder.limit = setTimeout(() => recorder?.stop(), MAX_RECORDING_SECONDS * 1000);
    recorder.start();
    ui.recordButton.textContent = "Stop recording";
    ui.recordButton.setAttribute("aria-pressed", "true");
    ui.cloneSource.textContent = `Recording (at most ${MAX_RECORDING_SECONDS} s)…`;
  } catch (error) {
    recorder = null;
    ui.cloneError.textContent = `Cannot record: ${error.message}.`;
  }
}

async function cloneVoice(event) {
  event.preventDefault();
  ui.cloneError.textContent = "";
  ui.cloneStatus.textContent = "";
  if (!cloneClip) {
    ui.cloneError.textContent = "Choose a recording file or record a clip first.";
    return;
  }
  const form = new FormData();
  form.append("file", cloneClip.blob, cloneClip.name);
  for (const [field, input] of [
    ["id", ui.cloneId],
    ["name", ui.cloneName],
    ["language", ui.cloneLanguages],
    ["transcript", ui.cloneTranscript],
  ]) {
    if (input.value.trim()) form.append(field, input.value.trim());
  }
  ui.cloneButton.disabled = true;
  ui.cloneStatus.textContent = "Cloning…";
  try {
    const response = await fetch("/v1/voices", { method: "POST", body: form });
    if (!response.ok) throw new Error(await errorMessage(response));
    const voice = await response.json();
    ui.cloneStatus.textContent = `Cloned voice ${voice.name} (${voice.id}).`;
    await refreshVoices();
    ui.voice.value = voice.id;
  } catch (error) {
    ui.cloneStatus.textContent = "";
    ui.cloneError.textContent = `Could not clone the voice: ${error.message}`;
  } finally {
    ui.cloneButton.disabled = false;
  }
}

// --- start-up ---------------------------------------------------------------------------------------------------

function wireUp() {
  fillSelect(ui.emotion, EMOTIONS);
  fillSelect(ui.dialect, DIALECTS);
  fillSelect(ui.style, STYLES);
  showRangeValue(ui.speed, $("speed-value"));
  showInstructions();
  for (const select of [ui.emotion, ui.dialect, ui.style]) select.addEventListener("change", showInstructions);
  ui.speechForm.addEventListener("submit", speak);
  watchAudioElement();
  ui.cloneFile.addEventListener("change", () => {
    const file = ui.cloneFile.files[0];
    if (file) chooseClip(file, file.name, `the file ${file.name}`);
  });
  ui.recordButton.addEventListener("click", toggleRecording);
  ui.cloneForm.addEventListener("submit", cloneVoice);
  refreshVoices();
}

wireUp();
