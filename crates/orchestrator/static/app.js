// The Duplex page: a conversation over one WebSocket (or a WebRTC call, or a
// LiveKit room: see startCall and startRoom). Microphone audio goes
// out as binary frames (AudioWorklet capture, the browser's echo cancellation
// and noise suppression on); the bot's audio comes back as binary frames and
// plays through an AudioWorklet jitter buffer that a `clear` empties at once.
"use strict";

// What the page saw, for people (the UI) and for the browser test.
const duplex = {
  errors: [],
  stats: {
    state: "connecting",
    statesSeen: [],
    connected: false,
    connections: 0,
    frames: 0,
    outputPeak: 0, // highest output level (RMS) measured after playback
    audibleMs: 0, // time the output was above SILENCE_RMS
    clears: [], // per clear event: ms until the output was silent
    transcripts: 0,
    replies: 0,
  },
};
window.duplex = duplex;
window.addEventListener("error", (e) => duplex.errors.push(String(e.message || e)));
window.addEventListener("unhandledrejection", (e) => duplex.errors.push(String(e.reason)));
const consoleError = console.error.bind(console);
console.error = (...args) => { duplex.errors.push(args.map(String).join(" ")); consoleError(...args); };

const SERVER_RATE = 48000;
const SILENCE_RMS = 0.005;
const MIC_HEADER = 16;
const RETRY_MS = [500, 1000, 2000, 4000, 8000];

const $ = (id) => document.getElementById(id);
// The server's access credential, when it asks for one: open the page as /?token=….
const accessToken = new URLSearchParams(location.search).get("token");
const authHeaders = () => (accessToken ? { authorization: `Bearer ${accessToken}` } : {});
let ws = null;
let sessionId = null;
let retries = 0;
let audio = null; // { ctx, playback, outAnalyser, resampler }
let mic = null; // { stream, source, capture, analyser }
let call = null; // WebRTC mode: { pc, dc }
let micSequence = 0;
let typedAt = null; // when typed text was sent, until its first audio
let pendingClear = null; // performance.now() of the last clear, until silence
const bubbles = new Map(); // turn → { li, text, heard }

// ---------- messages to the person ----------

const FRIENDLY = {
  WORKER_UNAVAILABLE: "No voice server is available right now, so the bot cannot speak. It will work again when one is back.",
  BUSY: "The server is busy with other conversations. Trying again shortly.",
  SYNTHESIS_FAILED: "The voice could not say that.",
  CONNECTION_ERROR: "The connection to the voice server failed.",
};

function showError(text) {
  const el = $("error");
  el.textContent = text;
  el.hidden = !text;
}

function setState(state, label) {
  duplex.stats.state = state;
  if (!duplex.stats.statesSeen.includes(state)) duplex.stats.statesSeen.push(state);
  const el = $("state");
  el.className = `state ${state}`;
  el.textContent = label || state.replace("_", " ");
}

// ---------- transcript ----------

function entry(kind, who, text) {
  const li = document.createElement("li");
  li.className = kind;
  const name = document.createElement("span");
  name.className = "who";
  name.textContent = who;
  const body = document.createElement("span");
  body.className = "text";
  body.textContent = text;
  li.append(name, body);
  $("transcript").append(li);
  li.scrollIntoView({ block: "nearest" });
  return li;
}

function botBubble(turn) {
  let b = bubbles.get(turn);
  if (!b) {
    b = { li: entry("bot", "Duplex:", ""), text: "", heard: null };
    bubbles.set(turn, b);
  }
  return b;
}

// What was said, and (when interrupted) the rest struck through as cut.
function renderBot(b) {
  const body = b.li.querySelector(".text");
  body.replaceChildren();
  if (b.heard === null) {
    body.textContent = b.text;
    return;
  }
  const said = document.createElement("span");
  said.textContent = b.heard;
  const rest = document.createElement("span");
  rest.className = "cut";
  rest.textContent = b.text.slice(b.heard.length);
  const mark = document.createElement("span");
  mark.className = "mark";
  mark.textContent = "(interrupted)";
  body.append(said, " ", rest, mark);
}

// ---------- audio ----------

// Linear resampling of the server's 48 kHz to the context's rate, continuous across frames.
class Resampler {
  constructor(from, to) {
    this.step = from / to;
    this.pos = 0;
    this.last = 0;
  }
  push(input) {
    if (this.step === 1) return input;
    const out = [];
    while (this.pos < input.length) {
      const i = Math.floor(this.pos);
      const frac = this.pos - i;
      const a = i === 0 ? this.last : input[i - 1];
      const b = input[i];
      out.push(a + (b - a) * frac);
      this.pos += this.step;
    }
    this.pos -= input.length;
    this.last = input[input.length - 1];
    return Float32Array.from(out);
  }
}

async function ensureAudio() {
  if (audio) {
    if (audio.ctx.state === "suspended") await audio.ctx.resume();
    return audio;
  }
  const ctx = new AudioContext({ latencyHint: "interactive" });
  await ctx.audioWorklet.addModule("/static/worklets.js");
  const playback = new AudioWorkletNode(ctx, "duplex-playback", {
    numberOfInputs: 0,
    outputChannelCount: [1],
    processorOptions: { prebufferMs: 60 },
  });
  const outAnalyser = ctx.createAnalyser();
  outAnalyser.fftSize = 256;
  playback.connect(outAnalyser);
  outAnalyser.connect(ctx.destination);
  audio = { ctx, playback, outAnalyser, resampler: new Resampler(SERVER_RATE, ctx.sampleRate) };
  if (ctx.state === "suspended") await ctx.resume();
  return audio;
}

function rms(analyser, buffer) {
  analyser.getFloatTimeDomainData(buffer);
  let sum = 0;
  for (const v of buffer) sum += v * v;
  return Math.sqrt(sum / buffer.length);
}

// Levels for the meters, audible time and how fast a clear went silent.
const levelBuffer = new Float32Array(256);
let lastPoll = performance.now();
setInterval(() => {
  const now = performance.now();
  const dt = now - lastPoll;
  lastPoll = now;
  if (audio) {
    const out = rms(audio.outAnalyser, levelBuffer);
    $("out-level").value = Math.min(1, Math.sqrt(out) * 2);
    duplex.stats.outputPeak = Math.max(duplex.stats.outputPeak, out);
    if (out > SILENCE_RMS) duplex.stats.audibleMs += dt;
    if (pendingClear !== null && out <= SILENCE_RMS) {
      duplex.stats.clears.push(now - pendingClear);
      pendingClear = null;
    }
  }
  if (mic) $("mic-level").value = Math.min(1, Math.sqrt(rms(mic.analyser, levelBuffer)) * 2);
}, 5);

function playFrame(data) {
  const view = new DataView(data);
  const last = (view.getUint16(2, true) & 1) === 1;
  const pcm = new Int16Array(data, MIC_HEADER);
  const samples = new Float32Array(pcm.length);
  for (let i = 0; i < pcm.length; i++) samples[i] = pcm[i] / 32768;
  if (!audio) return; // nothing can play before the first click; dropped
  const resampled = audio.resampler.push(samples);
  audio.playback.port.postMessage({ type: "audio", samples: resampled, last }, [resampled.buffer]);
}

function clearPlayback() {
  if (!audio) return;
  pendingClear = performance.now();
  audio.playback.port.postMessage({ type: "clear" });
  gateRemote(false);
}

async function startMic() {
  const { ctx } = await ensureAudio();
  let stream;
  try {
    stream = await navigator.mediaDevices.getUserMedia({
      audio: { echoCancellation: true, noiseSuppression: true, autoGainControl: true, channelCount: 1 },
    });
  } catch (e) {
    const why = e && e.name === "NotAllowedError"
      ? "Microphone access was denied. Allow the microphone for this site in the browser's settings, then press Start conversation again."
      : e && e.name === "NotFoundError"
        ? "No microphone was found. Connect one, then press Start conversation again."
        : `The microphone could not be opened (${e && e.message ? e.message : e}).`;
    showError(why);
    return false;
  }
  const source = ctx.createMediaStreamSource(stream);
  const analyser = ctx.createAnalyser();
  analyser.fftSize = 256;
  source.connect(analyser);
  const transport = $("transport").value;
  if (transport === "webrtc" || transport === "livekit") {
    // The microphone goes out as the call's own audio track (Opus).
    mic = { stream, source, capture: null, analyser };
    if (await (transport === "webrtc" ? startCall(stream) : startRoom(stream))) return true;
    stopMic();
    return false;
  }
  const capture = new AudioWorkletNode(ctx, "duplex-capture", { numberOfOutputs: 1, outputChannelCount: [1] });
  const mute = ctx.createGain();
  mute.gain.value = 0;
  source.connect(capture);
  capture.connect(mute).connect(ctx.destination); // keeps the worklet running, silently
  capture.port.onmessage = (event) => sendMic(event.data, ctx.sampleRate);
  mic = { stream, source, capture, analyser };
  return true;
}

// The bot's voice as a remote track (WebRTC and LiveKit modes): played and metered.
function hearRemote(remote) {
  // Chromium feeds remote WebRTC audio to Web Audio only while a media element plays it.
  const element = new Audio();
  element.muted = true;
  element.srcObject = remote;
  element.play().catch(() => {});
  const source = audio.ctx.createMediaStreamSource(remote);
  // The browser's jitter buffer for a track cannot be emptied: on `clear`
  // this gain mutes what it still holds, until the bot speaks again.
  const gate = audio.ctx.createGain();
  source.connect(gate).connect(audio.outAnalyser);
  if (call) Object.assign(call, { element, source, gate });
}

function gateRemote(open) {
  if (call && call.gate) call.gate.gain.setValueAtTime(open ? 1 : 0, audio.ctx.currentTime);
}

// LiveKit mode (static/livekit.js): the conversation in a LiveKit room.
async function startRoom(stream) {
  call = { pc: null, dc: null, livekit: true };
  const ok = await window.duplexLiveKit.start(stream, {
    onMessage,
    onRemoteStream: hearRemote,
    onError: showError,
    onState: (state) => { duplex.stats.livekit = state; },
  });
  if (!ok) call = null;
  return ok;
}

// WebRTC mode: a call to POST /rtc/offer; events come and go on its data channel.
async function startCall(stream) {
  const pc = new RTCPeerConnection({ iceServers: [] });
  for (const track of stream.getAudioTracks()) pc.addTrack(track, stream);
  const dc = pc.createDataChannel("events");
  dc.onmessage = (event) => onMessage(JSON.parse(event.data));
  pc.ontrack = (event) => hearRemote(event.streams[0] || new MediaStream([event.track]));
  pc.onconnectionstatechange = () => {
    duplex.stats.rtc = pc.connectionState;
    if (pc.connectionState === "failed") showError("The WebRTC call failed (the network may block UDP). Choose WebSocket and try again.");
  };
  call = { pc, dc };
  await pc.setLocalDescription(await pc.createOffer());
  await new Promise((resolve) => {
    if (pc.iceGatheringState === "complete") return resolve();
    pc.addEventListener("icegatheringstatechange", () => pc.iceGatheringState === "complete" && resolve());
    setTimeout(resolve, 3000);
  });
  let response;
  try {
    response = await fetch("/rtc/offer", {
      method: "POST",
      headers: { "content-type": "application/json", ...authHeaders() },
      body: JSON.stringify({ sdp: pc.localDescription.sdp }),
    });
  } catch (e) {
    response = null;
  }
  if (!response || !response.ok) {
    const why = response ? await response.text() : "the server did not answer";
    showError(`The server could not start a WebRTC call: ${why}`);
    pc.close();
    call = null;
    return false;
  }
  const answer = await response.json();
  await pc.setRemoteDescription({ type: "answer", sdp: answer.sdp });
  return true;
}

function stopMic() {
  if (!mic) return;
  if (call) {
    if (call.livekit) window.duplexLiveKit.stop();
    else call.pc.close();
    if (call.source) call.source.disconnect();
    call = null;
  }
  if (mic.capture) {
    mic.capture.port.onmessage = null;
    mic.capture.disconnect();
  }
  mic.source.disconnect();
  for (const track of mic.stream.getTracks()) track.stop();
  mic = null;
  $("mic-level").value = 0;
}

function sendMic(samples, rate) {
  if (!ws || ws.readyState !== WebSocket.OPEN) return; // offline: the audio is not kept
  const frame = new ArrayBuffer(MIC_HEADER + samples.length * 2);
  const view = new DataView(frame);
  view.setUint8(0, 2);
  view.setUint8(1, 1);
  view.setUint16(2, 0, true);
  view.setUint32(4, rate, true);
  view.setBigUint64(8, BigInt(micSequence++), true);
  const pcm = new Int16Array(frame, MIC_HEADER);
  for (let i = 0; i < samples.length; i++) {
    const s = Math.max(-1, Math.min(1, samples[i]));
    pcm[i] = s < 0 ? s * 32768 : s * 32767;
  }
  ws.send(frame);
}

// ---------- the connection ----------

function send(message) {
  if (call && call.livekit && window.duplexLiveKit.send(message)) return true;
  if (call && call.dc && call.dc.readyState === "open") {
    call.dc.send(JSON.stringify(message));
    return true;
  }
  if (ws && ws.readyState === WebSocket.OPEN) {
    ws.send(JSON.stringify(message));
    return true;
  }
  showError("Not connected to the server right now; reconnecting. Try again in a moment.");
  return false;
}

function connect() {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const resume = sessionId ? `&session_id=${encodeURIComponent(sessionId)}` : "";
  const token = accessToken ? `&token=${encodeURIComponent(accessToken)}` : "";
  ws = new WebSocket(`${scheme}://${location.host}/ws?audio_format=binary${resume}${token}`);
  ws.binaryType = "arraybuffer";
  ws.onopen = () => {
    retries = 0;
    duplex.stats.connected = true;
    duplex.stats.connections++;
    showError("");
    setState("listening", mic ? "listening" : "ready");
    const voice = $("voice").value;
    if (voice) send({ type: "config", model: voice });
  };
  ws.onmessage = (event) => {
    if (typeof event.data !== "string") {
      duplex.stats.frames++;
      if (typedAt !== null) {
        $("latency").textContent = `typed → first reply audio ${Math.round(performance.now() - typedAt)} ms`;
        typedAt = null;
      }
      playFrame(event.data);
      return;
    }
    onMessage(JSON.parse(event.data));
  };
  ws.onclose = () => {
    duplex.stats.connected = false;
    const wait = RETRY_MS[Math.min(retries, RETRY_MS.length - 1)];
    retries++;
    setState("disconnected", "disconnected");
    showError(`The connection to the Duplex server at ${location.host} was lost. Reconnecting in ${wait / 1000} s…`);
    clearPlayback();
    setTimeout(connect, wait);
  };
}

function onMessage(m) {
  switch (m.type) {
    case "session_start":
      sessionId = m.session_id;
      break;
    case "state":
      setState(m.state);
      // New speech from the bot (a reply, or the cut one resumed) is heard again.
      if (m.state === "speaking") gateRemote(true);
      break;
    case "transcript":
      duplex.stats.transcripts++;
      entry("user", "You:", m.text);
      break;
    case "reply": {
      duplex.stats.replies++;
      const b = botBubble(m.turn);
      b.text += m.text;
      renderBot(b);
      break;
    }
    case "interrupted": {
      const b = botBubble(m.turn);
      b.heard = m.heard;
      renderBot(b);
      break;
    }
    case "resumed": {
      const b = botBubble(m.turn);
      b.heard = null;
      renderBot(b);
      break;
    }
    case "clear":
      clearPlayback();
      break;
    case "turn_metrics": {
      const part = (label, ms) => (ms == null ? null : `${label} ${Math.round(ms)} ms`);
      const parts = [part("transcript", m.transcript_ms), part("reply", m.first_reply_text_ms), part("first audio", m.first_audio_ms)]
        .filter(Boolean);
      if (parts.length) $("latency").textContent = `${parts.join(" · ")} after you stopped speaking`;
      break;
    }
    case "error":
      showError(FRIENDLY[m.code] ? `${FRIENDLY[m.code]} (${m.message})` : m.message);
      break;
    case "session_end":
      if (m.reason === "server_shutdown") showError("The server is restarting. Reconnecting…");
      break;
    default:
      break;
  }
}

async function loadVoices() {
  try {
    const response = await fetch("/api/voices");
    if (!response.ok) return;
    const { voices } = await response.json();
    const select = $("voice");
    for (const v of voices) {
      const option = document.createElement("option");
      option.value = v.id;
      option.textContent = v.languages.length ? `${v.id} (${v.languages.join(", ")})` : v.id;
      select.append(option);
    }
  } catch (_) {
    // The list is a convenience; the default voice works without it.
  }
}

// ---------- controls ----------

$("talk").addEventListener("click", async () => {
  const button = $("talk");
  if (mic) {
    stopMic();
    button.textContent = "Start conversation";
    button.setAttribute("aria-pressed", "false");
    return;
  }
  if (await startMic()) {
    showError("");
    button.textContent = "End conversation";
    button.setAttribute("aria-pressed", "true");
    if (duplex.stats.connected) setState(duplex.stats.state === "ready" ? "listening" : duplex.stats.state);
  }
});

$("interrupt").addEventListener("click", () => {
  send({ type: "control", command: "STOP" });
  clearPlayback();
});

$("voice").addEventListener("change", () => send({ type: "config", model: $("voice").value }));

$("say").addEventListener("submit", async (event) => {
  event.preventDefault();
  const text = $("text").value.trim();
  if (!text) return;
  await ensureAudio();
  // A turn like a spoken one: the transcript event shows it, the bot answers.
  if (send({ type: "user_text", text })) {
    typedAt = performance.now();
    $("text").value = "";
  }
});

loadVoices();
connect();
