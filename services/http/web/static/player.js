// Gapless playback of streamed audio chunks with WebAudio: each chunk becomes a buffer source started exactly
// where the previous one ends on the audio clock. Counts what was scheduled and what the clock actually played.

const START_LEAD_SECONDS = 0.06; // head room when (re)starting after an underrun, so the first chunk is not late

export class StreamPlayer {
  constructor(context, { onProgress = () => {} } = {}) {
    this.context = context;
    this.onProgress = onProgress;
    this.playing = new Set(); // {source, start, duration}
    this.nextStart = 0;
    this.scheduledSeconds = 0;
    this.playedSeconds = 0;
    this.chunksPlayed = 0;
  }

  // Float samples in [-1, 1] at sampleRate; the context resamples to its own rate.
  enqueue(samples, sampleRate) {
    if (samples.length === 0) return;
    const buffer = this.context.createBuffer(1, samples.length, sampleRate);
    buffer.copyToChannel(samples, 0);
    const source = this.context.createBufferSource();
    source.buffer = buffer;
    source.connect(this.context.destination);
    const earliest = this.context.currentTime + START_LEAD_SECONDS;
    if (this.nextStart < earliest) this.nextStart = earliest; // underrun (or first chunk)
    const entry = { source, start: this.nextStart, duration: buffer.duration };
    source.onended = () => this.#finished(entry);
    source.start(entry.start);
    this.playing.add(entry);
    this.nextStart += buffer.duration;
    this.scheduledSeconds += buffer.duration;
    this.onProgress(this);
  }

  // Seconds the audio clock has played of everything enqueued (finished chunks plus the current one).
  get playedSecondsNow() {
    let seconds = this.playedSeconds;
    for (const entry of this.playing) seconds += this.#playedPart(entry);
    return seconds;
  }

  get isPlaying() {
    return this.playing.size > 0;
  }

  // Seconds of audio still queued ahead of the clock.
  get bufferedSeconds() {
    return Math.max(0, this.nextStart - this.context.currentTime);
  }

  // Stops at once and drops what is queued (barge-in, a new reply, leaving the page).
  stop() {
    this.nextStart = 0;
    for (const entry of [...this.playing]) {
      entry.source.onended = null;
      entry.source.stop();
      this.#finished(entry);
    }
  }

  #playedPart(entry) {
    const elapsed = this.context.currentTime - entry.start;
    return Math.min(Math.max(elapsed, 0), entry.duration);
  }

  #finished(entry) {
    if (!this.playing.delete(entry)) return;
    const played = this.#playedPart(entry);
    this.playedSeconds += played;
    if (played > 0) this.chunksPlayed += 1;
    this.onProgress(this);
  }
}
