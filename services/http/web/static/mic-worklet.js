// AudioWorklet processor of the microphone: mixes to mono, resamples to the target rate (a windowed-sinc
// low-pass at the input rate against aliasing, then linear interpolation at the output instants), converts
// to 16-bit PCM and posts fixed-size chunks to the page, each with its peak level (0..1) for the meter.

const FILTER_TAPS = 31;

function lowPassTaps(cutoff) {
  // cutoff in cycles per input sample (0..0.5); Blackman window; unit gain at DC.
  const middle = (FILTER_TAPS - 1) / 2;
  const taps = new Float32Array(FILTER_TAPS);
  let sum = 0;
  for (let k = 0; k < FILTER_TAPS; k++) {
    const x = k - middle;
    const sinc = x === 0 ? 2 * cutoff : Math.sin(2 * Math.PI * cutoff * x) / (Math.PI * x);
    const window =
      0.42 - 0.5 * Math.cos((2 * Math.PI * k) / (FILTER_TAPS - 1)) + 0.08 * Math.cos((4 * Math.PI * k) / (FILTER_TAPS - 1));
    taps[k] = sinc * window;
    sum += taps[k];
  }
  return taps.map((tap) => tap / sum);
}

class MicCaptureProcessor extends AudioWorkletProcessor {
  constructor(options) {
    super();
    const { targetRate = 24000, chunkMs = 40 } = options.processorOptions ?? {};
    this.step = sampleRate / targetRate; // input samples per output sample
    this.taps = this.step > 1 ? lowPassTaps((0.45 * targetRate) / sampleRate) : Float32Array.of(1);
    this.history = new Float32Array(this.taps.length);
    this.historyIndex = 0;
    this.previous = 0; // last filtered input sample
    this.nextOutput = 1; // distance from the previous input sample to the next output instant, in input samples
    this.chunkSamples = Math.round((targetRate * chunkMs) / 1000);
    this.chunk = new Int16Array(this.chunkSamples);
    this.filled = 0;
    this.peak = 0;
  }

  filter(sample) {
    const { history, taps } = this;
    history[this.historyIndex] = sample;
    this.historyIndex = (this.historyIndex + 1) % history.length;
    let sum = 0;
    let index = this.historyIndex;
    for (let k = 0; k < taps.length; k++) {
      sum += taps[k] * history[index];
      index = index + 1 === history.length ? 0 : index + 1;
    }
    return sum;
  }

  emit(value) {
    const clipped = Math.max(-1, Math.min(1, value));
    this.peak = Math.max(this.peak, Math.abs(clipped));
    this.chunk[this.filled++] = Math.round(clipped * 32767);
    if (this.filled === this.chunkSamples) {
      this.port.postMessage({ pcm: this.chunk.buffer, peak: this.peak }, [this.chunk.buffer]);
      this.chunk = new Int16Array(this.chunkSamples);
      this.filled = 0;
      this.peak = 0;
    }
  }

  process(inputs) {
    const channels = inputs[0];
    if (!channels || channels.length === 0) return true; // the source is not connected (yet)
    const frames = channels[0].length;
    for (let i = 0; i < frames; i++) {
      let mono = 0;
      for (const channel of channels) mono += channel[i];
      const current = this.filter(mono / channels.length);
      while (this.nextOutput <= 1) {
        this.emit(this.previous + (current - this.previous) * this.nextOutput);
        this.nextOutput += this.step;
      }
      this.nextOutput -= 1;
      this.previous = current;
    }
    return true;
  }
}

registerProcessor("mic-capture", MicCaptureProcessor);
