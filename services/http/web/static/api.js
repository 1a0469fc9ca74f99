// Calls to this service's HTTP API, and the pickers both pages share (voice, emotion, dialect, style, speed).

// The message of an error response in OpenAI's shape ({"error": {"message", ...}}), or a description of it.
export async function errorMessage(response) {
  try {
    const body = await response.json();
    if (body?.error?.message) return body.error.message;
  } catch {
    // not JSON: fall through
  }
  return `${response.status} ${response.statusText || "error"}`;
}

export async function fetchJson(url, options = {}) {
  const response = await fetch(url, options);
  if (!response.ok) throw new Error(await errorMessage(response));
  return response.json();
}

// The voices, and a name the service maps to "the cluster's own choice" ("" when it has none).
export async function listVoices() {
  const body = await fetchJson("/v1/voices");
  const defaultName = Object.entries(body.aliases ?? {}).find(([, id]) => id === "")?.[0] ?? "";
  return { voices: body.data, defaultName };
}

export async function deleteVoice(voiceId) {
  return fetchJson(`/v1/voices/${encodeURIComponent(voiceId)}`, { method: "DELETE" });
}

// Voice controls of the cluster (VoiceControls in protos/stepaudio/common/v1/speech.proto), with the words the
// HTTP API's `instructions` recognises for each (services/http/speech_options.py).
export const EMOTIONS = [
  { value: "", label: "Neutral" },
  { value: "happy", label: "Happy (高兴)" },
  { value: "angry", label: "Angry (生气)" },
  { value: "sad", label: "Sad (悲伤)" },
  { value: "coquettish", label: "Coquettish (撒娇)" },
];
export const DIALECTS = [
  { value: "", label: "The voice's own", word: "" },
  { value: "zh", label: "Mandarin (中文)", word: "Mandarin" },
  { value: "en", label: "English (英文)", word: "English" },
  { value: "zh-sichuan", label: "Sichuanese (四川话)", word: "Sichuanese" },
  { value: "yue", label: "Cantonese (粤语)", word: "Cantonese" },
  { value: "ja", label: "Japanese (日语)", word: "Japanese" },
  { value: "ko", label: "Korean (韩语)", word: "Korean" },
];
export const STYLES = [
  { value: "", label: "Speech" },
  { value: "rap", label: "Rap (RAP)" },
  { value: "humming", label: "Humming (哼唱)" },
];

export function fillSelect(select, options) {
  select.replaceChildren(...options.map(({ value, label }) => new Option(label, value)));
}

export function voiceLabel(voice) {
  const languages = voice.languages.length ? ` — ${voice.languages.join(", ")}` : "";
  return `${voice.name}${voice.name === voice.id ? "" : ` (${voice.id})`}${languages}${voice.cloned ? " · cloned" : ""}`;
}

// Fills a voice <select>: the cluster's own choice first (its value is the name the service maps to it, when there
// is one), then every voice; keeps the current choice if it is still there.
export function fillVoiceSelect(select, { voices, defaultName }, defaultLabel) {
  const current = select.value;
  const choices = voices.map((voice) => ({ value: voice.id, label: voiceLabel(voice) }));
  fillSelect(select, defaultName ? [{ value: defaultName, label: defaultLabel }, ...choices] : choices);
  if ([...select.options].some((option) => option.value === current)) select.value = current;
}

// The `instructions` text that names the chosen controls in words the API maps to typed controls.
export function instructionsFor({ emotion, dialect, style }) {
  const words = [];
  if (emotion) words.push(emotion);
  const dialectWord = DIALECTS.find((d) => d.value === dialect)?.word;
  if (dialectWord) words.push(dialectWord);
  if (style) words.push(style);
  return words.join(", ");
}

// Shows a <input type=range> value next to its label.
export function showRangeValue(input, output, unit = "×") {
  const update = () => (output.textContent = `${Number(input.value).toFixed(2)}${unit}`);
  input.addEventListener("input", update);
  update();
}
