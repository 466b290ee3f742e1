// LiveKit mode: the conversation in a LiveKit room instead of over our own
// socket. The page asks the orchestrator for a token (/livekit/token), joins
// the room with the livekit-client library (served from the asset cache),
// publishes the microphone, and asks for the bot (/livekit/join). The bot's
// voice arrives as a track; its events come as data packets on topic
// "duplex", the same JSON the WebSocket carries; typed text goes back the
// same way.
"use strict";

window.duplexLiveKit = (() => {
  const TOPIC = "duplex";
  let room = null;
  // The Duplex server's own access credential, if it asks for one (/?token=…).
  const access = new URLSearchParams(location.search).get("token");
  const auth = access ? { authorization: `Bearer ${access}` } : {};

  function loadLibrary() {
    if (window.LivekitClient) return Promise.resolve(true);
    return new Promise((resolve) => {
      const script = document.createElement("script");
      script.src = "/static/livekit-client.js";
      script.onload = () => resolve(Boolean(window.LivekitClient));
      script.onerror = () => resolve(false);
      document.head.append(script);
    });
  }

  function roomName() {
    const asked = new URLSearchParams(location.search).get("room");
    return asked || `duplex-${Math.random().toString(36).slice(2, 10)}`;
  }

  // hooks: { onMessage(m), onRemoteStream(stream), onError(text), onState(s) }
  async function start(stream, hooks) {
    const name = roomName();
    const identity = `user-${Math.random().toString(36).slice(2, 10)}`;
    let response;
    try {
      response = await fetch(`/livekit/token?room=${encodeURIComponent(name)}&identity=${encodeURIComponent(identity)}`, { headers: auth });
    } catch (_) {
      hooks.onError("The Duplex server did not answer; it may be down.");
      return false;
    }
    if (!response.ok) {
      hooks.onError(response.status === 404
        ? "LiveKit is not set up on this server (transport.livekit in its config). Choose WebSocket or WebRTC."
        : `The server would not let this page into a LiveKit room: ${await response.text()}`);
      return false;
    }
    const { token, url } = await response.json();
    if (!(await loadLibrary())) {
      hooks.onError("The LiveKit client library is missing on the server (run `duplex assets` there).");
      return false;
    }
    const LK = window.LivekitClient;
    room = new LK.Room();
    room.on(LK.RoomEvent.TrackSubscribed, (track) => {
      if (track.kind === "audio") hooks.onRemoteStream(new MediaStream([track.mediaStreamTrack]));
    });
    room.on(LK.RoomEvent.DataReceived, (payload, _participant, _kind, topic) => {
      if (topic === TOPIC) hooks.onMessage(JSON.parse(new TextDecoder().decode(payload)));
    });
    room.on(LK.RoomEvent.Disconnected, () => hooks.onState("disconnected"));
    hooks.onState("connecting");
    try {
      await room.connect(url, token);
    } catch (e) {
      room = null;
      hooks.onState("failed");
      hooks.onError(`Could not reach the LiveKit server at ${url}. Is it running? (${e && e.message ? e.message : e})`);
      return false;
    }
    await room.localParticipant.publishTrack(stream.getAudioTracks()[0], { source: LK.Track.Source.Microphone });
    const joined = await fetch("/livekit/join", {
      method: "POST",
      headers: { "content-type": "application/json", ...auth },
      body: JSON.stringify({ room: name }),
    });
    // 409: the bot is in this room already.
    if (!joined.ok && joined.status !== 409) hooks.onError(`The bot could not join the room: ${await joined.text()}`);
    hooks.onState("connected");
    return true;
  }

  function send(message) {
    if (!room) return false;
    const payload = new TextEncoder().encode(JSON.stringify(message));
    room.localParticipant.publishData(payload, { reliable: true, topic: TOPIC });
    return true;
  }

  function stop() {
    if (room) room.disconnect();
    room = null;
  }

  return { start, send, stop, get active() { return room !== null; } };
})();
