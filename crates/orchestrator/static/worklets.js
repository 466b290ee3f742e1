// Audio worklets of the Duplex page: microphone capture and bot playback.
// They run on the browser's audio thread; the page talks to them by messages.

// Capture: hands the page the microphone's samples in 20 ms blocks (at the
// context's rate), which it sends to the server as binary frames.
class DuplexCapture extends AudioWorkletProcessor {
  constructor() {
    super();
    this.block = Math.round(sampleRate / 50);
    this.buffer = new Float32Array(this.block);
    this.filled = 0;
  }

  process(inputs) {
    const channel = inputs[0] && inputs[0][0];
    if (!channel) return true;
    let at = 0;
    while (at < channel.length) {
      const n = Math.min(channel.length - at, this.block - this.filled);
      this.buffer.set(channel.subarray(at, at + n), this.filled);
      this.filled += n;
      at += n;
      if (this.filled === this.block) {
        this.port.postMessage(this.buffer.slice(0));
        this.filled = 0;
      }
    }
    return true;
  }
}

// Playback: a small jitter buffer of the bot's audio (already at the
// context's rate). Playing starts once `prebufferMs` is queued (or the
// utterance's last frame arrived) and restarts that way after running dry.
// A "clear" message empties it at once: the next render quantum is silent.
class DuplexPlayback extends AudioWorkletProcessor {
  constructor(options) {
    super();
    const opts = (options && options.processorOptions) || {};
    this.prebuffer = Math.round(((opts.prebufferMs || 60) * sampleRate) / 1000);
    this.queue = [];
    this.offset = 0; // into queue[0]
    this.queued = 0;
    this.playing = false;
    this.ending = false;
    this.port.onmessage = (event) => {
      const m = event.data;
      if (m.type === "audio") {
        this.queue.push(m.samples);
        this.queued += m.samples.length;
        if (m.last) this.ending = true;
      } else if (m.type === "clear") {
        this.queue = [];
        this.offset = 0;
        this.queued = 0;
        this.playing = false;
        this.ending = false;
        this.port.postMessage({ type: "cleared", at: currentTime });
      }
    };
  }

  process(_inputs, outputs) {
    const out = outputs[0][0];
    if (!this.playing && (this.queued >= this.prebuffer || (this.ending && this.queued > 0))) {
      this.playing = true;
    }
    let written = 0;
    while (this.playing && written < out.length && this.queue.length > 0) {
      const head = this.queue[0];
      const n = Math.min(out.length - written, head.length - this.offset);
      out.set(head.subarray(this.offset, this.offset + n), written);
      written += n;
      this.offset += n;
      this.queued -= n;
      if (this.offset === head.length) {
        this.queue.shift();
        this.offset = 0;
      }
    }
    out.fill(0, written);
    if (this.playing && this.queue.length === 0) {
      this.playing = false;
      this.ending = false;
    }
    for (let c = 1; c < outputs[0].length; c++) outputs[0][c].set(out);
    return true;
  }
}

registerProcessor("duplex-capture", DuplexCapture);
registerProcessor("duplex-playback", DuplexPlayback);
