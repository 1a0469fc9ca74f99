// The microphone as a stream of 16-bit PCM chunks at a fixed rate (AudioWorklet: mic-worklet.js).

export async function openMicrophone(context, onChunk, { sampleRate = 24000, chunkMs = 40 } = {}) {
  if (!navigator.mediaDevices?.getUserMedia) {
    throw new Error("this browser gives no microphone here (it needs https, or http on localhost)");
  }
  const stream = await navigator.mediaDevices
    .getUserMedia({
      // Echo cancellation keeps the reply coming out of the speakers from counting as the user speaking (barge-in).
      audio: { channelCount: 1, echoCancellation: true, noiseSuppression: true, autoGainControl: true },
    })
    .catch((error) => {
      throw new Error(microphoneProblem(error));
    });
  try {
    await context.audioWorklet.addModule(new URL("./mic-worklet.js", import.meta.url));
    const source = context.createMediaStreamSource(stream);
    const capture = new AudioWorkletNode(context, "mic-capture", {
      numberOfInputs: 1,
      numberOfOutputs: 0,
      processorOptions: { targetRate: sampleRate, chunkMs },
    });
    capture.port.onmessage = ({ data }) => onChunk(new Int16Array(data.pcm), data.peak);
    source.connect(capture);
    return {
      label: stream.getAudioTracks()[0]?.label ?? "microphone",
      close() {
        capture.port.onmessage = null;
        source.disconnect();
        stream.getTracks().forEach((track) => track.stop());
      },
    };
  } catch (error) {
    stream.getTracks().forEach((track) => track.stop());
    throw error;
  }
}

// What went wrong opening the microphone, in words a user can act on.
export function microphoneProblem(error) {
  switch (error?.name) {
    case "NotAllowedError":
      return "microphone access was refused: allow it for this site in the browser's settings, then try again";
    case "NotFoundError":
      return "no microphone was found";
    case "NotReadableError":
      return "the microphone is in use by another program, or the system refused it";
    default:
      return `the microphone could not be opened (${error?.message ?? error})`;
  }
}
