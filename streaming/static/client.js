// actorcast browser client: one WebRTC call, control over a data channel, and live stats measured in the page.
"use strict";

const $ = (id) => document.getElementById(id);
const call = { pc: null, dc: null, frames: [], presented: [], latencies: [], offset: null, rtt: null,
               server: null, videoDelays: [], avOffset: null, running: false, shown: [], sentAudio: [] };
window.actorcast = call;  // tests read call.stats()

const nowEpoch = () => performance.timeOrigin + performance.now();
// Latency = when a frame is presented - when the audio it shows was captured, both on this page's clock. The
// page notes when each encoded 20 ms audio frame leaves its encoder (insertable streams), by RTP timestamp;
// the server returns, with each video frame, the RTP timestamp of that frame's first audio sample. A sample is
// taken as captured when its encoded frame left minus the rest of that frame (the encoder emits a frame as
// soon as its last sample is in).
const AUDIO_RTP_RATE = 48;  // RTP ticks per ms (Opus)

function passThrough(endpoint, onFrame) {
  if (!endpoint.createEncodedStreams) return false;
  const { readable, writable } = endpoint.createEncodedStreams();
  const transform = new TransformStream({ transform(frame, ctl) { if (onFrame) onFrame(frame); ctl.enqueue(frame); } });
  readable.pipeThrough(transform).pipeTo(writable);
  return true;
}

function noteEncodedAudio(frame) {
  const meta = frame.getMetadata ? frame.getMetadata() : {};
  const rtp = (meta.rtpTimestamp !== undefined ? meta.rtpTimestamp : frame.timestamp) >>> 0;
  call.sentAudio.push([rtp, performance.now(), frame.data.byteLength]);
  if (call.sentAudio.length > 3000) call.sentAudio.splice(0, 500);
}

function captureTime(rtp) {  // page time (performance.now) the audio sample with this RTP timestamp was captured
  const a = call.sentAudio;
  for (let i = a.length - 1; i >= 0; i--) {
    const ahead = (rtp - a[i][0]) >>> 0;  // ticks from this frame's first sample to the sample
    const next = i + 1 < a.length ? (a[i + 1][0] - a[i][0]) >>> 0 : 960;
    if (ahead < next) return a[i][1] - (next - ahead) / AUDIO_RTP_RATE;
  }
  return null;
}

function pct(values, q) {
  if (!values.length) return null;
  const s = [...values].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor(q * s.length))];
}

function fmt(x) { return x === null || x === undefined ? "–" : x.toFixed(0); }

async function readPortrait() {
  const file = $("portrait").files[0];
  if (!file) return null;
  return await new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(file);
  });
}

function faceNumber() {
  const text = $("face").value.trim();
  if (text === "") return null;
  const face = Number(text);
  if (!Number.isSafeInteger(face) || face < 1) throw new Error(`face must be a whole number from 1, got "${text}"`);
  return face;
}

function authHeaders() {
  const headers = { "Content-Type": "application/json" };
  if ($("token").value) headers.Authorization = `Bearer ${$("token").value}`;
  return headers;
}

// The server finds the face in the chosen portrait and frames it as a call would: shows the square that will be
// animated (and which face, when there are several), or the error, before any call or microphone prompt.
async function checkPortrait() {
  const box = $("portrait-check");
  box.hidden = true;
  $("error").textContent = "";
  const portrait = await readPortrait();
  if (!portrait) return true;
  $("portrait-note").textContent = "finding the face…";
  try {
    const resp = await fetch("/portrait", { method: "POST", headers: authHeaders(),
                                            body: JSON.stringify({ portrait, face: faceNumber() }) });
    const info = await resp.json();
    if (!resp.ok) throw new Error(info.error || resp.statusText);
    $("portrait-preview").src = info.preview;
    $("portrait-note").textContent = info.note || `face found in the ${info.width}×${info.height} picture`;
    box.hidden = false;
    call.portrait = info;
    return true;
  } catch (err) {
    $("error").textContent = `portrait: ${err.message}`;
    call.portrait = { error: err.message };
    return false;
  }
}

function waitGathering(pc) {
  if (pc.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    pc.addEventListener("icegatheringstatechange", () => {
      if (pc.iceGatheringState === "complete") resolve();
    });
  });
}

function onMessage(event) {
  const msg = JSON.parse(event.data);
  if (msg.type === "pong") {
    const t1 = nowEpoch(), rtt = t1 - msg.t;
    if (call.rtt === null || rtt <= call.rtt * 1.5) {  // keep offsets from quick round trips only
      call.rtt = call.rtt === null ? rtt : Math.min(call.rtt, rtt);
      call.offset = msg.server_ms - (msg.t + t1) / 2;  // server clock - page clock
    }
  } else if (msg.type === "stats") {
    call.server = msg;
    for (const f of msg.frames) call.frames.push(f);  // [sent_ms, latency_ms, index, degraded, pts, capture_ms]
    if (call.frames.length > 600) call.frames.splice(0, call.frames.length - 600);
    resolveShown();
  } else if (msg.type === "error") {
    $("error").textContent = msg.error;
  }
}

function matchByTime(sentServerMs) {
  let best = null, bestErr = 15;
  for (const f of call.frames) {
    const err = Math.abs(f[0] - sentServerMs);
    if (err < bestErr) { best = f; bestErr = err; }
  }
  return best;
}

// Which server frame is on screen: by RTP timestamp (= random origin + pts) once the origin is known; the
// origin is learnt from frames matched by send time (RTCP capture time, else receipt - rtt/2).
function matchFrame(meta) {
  if (call.rtpOrigin === undefined && call.offset !== null) {
    const sentPage = meta.captureTime !== undefined ? meta.captureTime : meta.receiveTime - call.rtt / 2;
    const f = sentPage === undefined ? null : matchByTime(performance.timeOrigin + sentPage + call.offset);
    if (f) {
      const origin = (meta.rtpTimestamp - f[4]) >>> 0;
      call.originVotes = call.originVotes || {};
      call.originVotes[origin] = (call.originVotes[origin] || 0) + 1;
      if (call.originVotes[origin] >= 3) call.rtpOrigin = origin;
    }
    return null;
  }
  if (call.rtpOrigin === undefined) return null;
  const pts = (meta.rtpTimestamp - call.rtpOrigin) >>> 0;
  for (let i = call.frames.length - 1; i >= 0; i--) if (call.frames[i][4] === pts) return call.frames[i];
  return null;
}

function onVideoFrame(now, meta) {
  if (!call.running) return;
  const video = $("remote");
  call.presented.push(now);
  if (call.presented.length > 100) call.presented.shift();
  const shown = meta.expectedDisplayTime || meta.presentationTime;
  if (meta.receiveTime !== undefined) call.videoDelays.push(shown - meta.receiveTime);
  if (call.videoDelays.length > 100) call.videoDelays.shift();
  // the server's record of this frame arrives with its next stats message: resolve it then
  call.shown.push({ rtpTimestamp: meta.rtpTimestamp, captureTime: meta.captureTime, receiveTime: meta.receiveTime,
                    shown });
  video.requestVideoFrameCallback(onVideoFrame);
}

function resolveShown() {
  const keep = [];
  for (const meta of call.shown) {
    const f = matchFrame(meta);
    if (f) {
      const captured = f[5] === null || f[5] === undefined ? null : captureTime(f[5]);
      if (captured !== null) {
        call.latencies.push(meta.shown - captured);
        if (call.latencies.length > 1500) call.latencies.shift();
      }
    } else if (performance.now() - meta.shown < 2000) {
      keep.push(meta);
    }
  }
  call.shown = keep;
}

// Audio receive -> play delay over the last stats interval (NetEq buffer + output device), in ms.
async function audioPlayoutDelayMs() {
  const stats = await call.pc.getStats();
  let now = null;
  stats.forEach((s) => {
    if (s.type === "inbound-rtp" && s.kind === "audio") now = { ...(now || {}), jb: s.jitterBufferDelay, n: s.jitterBufferEmittedCount };
    if (s.type === "media-playout") now = { ...(now || {}), po: s.totalPlayoutDelay, pn: s.totalSamplesCount };
  });
  const prev = call.prevAudio;
  call.prevAudio = now;
  if (!now || !prev || !(now.n > prev.n)) return call.audioDelay || null;
  let delay = 1000 * (now.jb - prev.jb) / (now.n - prev.n);
  if (now.pn > prev.pn) delay += 1000 * (now.po - prev.po) / (now.pn - prev.pn);
  call.audioDelay = delay;
  return delay;
}

async function refresh() {
  if (!call.running) return;
  call.dc.readyState === "open" && call.dc.send(JSON.stringify({ type: "ping", t: nowEpoch() }));
  const p = call.presented;
  const fps = p.length > 1 ? 1000 * (p.length - 1) / (p[p.length - 1] - p[0]) : null;
  const audioDelay = await audioPlayoutDelayMs();
  const videoDelay = call.videoDelays.length ? call.videoDelays.reduce((a, b) => a + b) / call.videoDelays.length : null;
  const sender = call.server ? call.server.sender_av_offset_ms : null;
  // same content: voice plays at (send - sender offset) + audio buffer, video at send + video buffer + render
  call.avOffset = audioDelay !== null && videoDelay !== null && sender !== null ? audioDelay - videoDelay - sender : null;
  $("s-fps").textContent = fps === null ? "–" : fps.toFixed(1);
  $("s-frames").textContent = String(call.presentedCount || 0);
  $("s-latency").textContent = `${fmt(pct(call.latencies, 0.5))} / ${fmt(pct(call.latencies, 0.95))}`;
  if (call.server) {
    const s = call.server.server_latency_ms;
    $("s-server").textContent = `${fmt(s.p50)} / ${fmt(s.p95)}`;
    $("s-degraded").textContent = String(call.server.sent_degraded_frames);
  }
  $("s-av").textContent = fmt(call.avOffset);
  $("s-rtt").textContent = fmt(call.rtt);
  call.fps = fps;
}

call.stats = () => ({
  state: $("s-state").textContent, fps: call.fps, presented: call.presentedCount || 0,
  latency_ms: { p50: pct(call.latencies, 0.5), p95: pct(call.latencies, 0.95), n: call.latencies.length },
  av_offset_ms: call.avOffset, rtt_ms: call.rtt, server: call.server,
  av_parts_ms: { audio_playout: call.audioDelay || null, sender: call.server ? call.server.sender_av_offset_ms : null,
                 video_display: call.videoDelays.length ? call.videoDelays.reduce((a, b) => a + b) / call.videoDelays.length : null },
});

// The identity field takes any whole number >= 0 (each is a built-in face), up to what a JS number holds exactly.
function identitySeed() {
  const text = $("identity").value.trim();
  const seed = Number(text === "" ? "0" : text);
  if (!Number.isSafeInteger(seed) || seed < 0) {
    throw new Error(`identity must be a whole number from 0 to ${Number.MAX_SAFE_INTEGER}, got "${text}"`);
  }
  return seed;
}

// The microphone, or an error that says why there is none and what to do.
async function openMicrophone() {
  if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
    throw new Error("this browser offers the microphone only to https pages or http://localhost / 127.0.0.1: "
                    + "open the page at such an address");
  }
  try {
    return await navigator.mediaDevices.getUserMedia({ audio: true, video: false });
  } catch (err) {
    if (err.name === "NotAllowedError" || err.name === "SecurityError") {
      throw new Error("the microphone was refused: allow it for this page (the icon at the left of the address "
                      + "bar, or the browser's site settings) and press Start call again");
    }
    if (err.name === "NotFoundError" || err.name === "OverconstrainedError") {
      throw new Error("no microphone was found: connect one and press Start call again");
    }
    if (err.name === "NotReadableError") {
      throw new Error("the microphone is in use by another program or cannot be opened: free it and press Start "
                      + "call again");
    }
    throw new Error(`the microphone cannot be used (${err.name}: ${err.message})`);
  }
}

async function start() {
  $("error").textContent = "";
  $("start").disabled = true;
  try {
    const seed = identitySeed();
    const face = faceNumber();
    if (!(await checkPortrait())) { $("start").disabled = false; return; }
    const mic = await openMicrophone();
    // loopback/LAN: no STUN contacted. Insertable streams: see captureTime.
    const insertable = "createEncodedStreams" in RTCRtpSender.prototype;
    const pc = new RTCPeerConnection({ iceServers: [], encodedInsertableStreams: insertable });
    call.pc = pc;
    mic.getTracks().forEach((t) => passThrough(pc.addTrack(t, mic), noteEncodedAudio));
    pc.addTransceiver("video", { direction: "recvonly" });
    call.dc = pc.createDataChannel("control");
    call.dc.onmessage = onMessage;
    pc.ontrack = (e) => {
      if (insertable) passThrough(e.receiver, null);  // with insertable streams on, every receiver must pipe
      const video = $("remote");
      if (video.srcObject !== e.streams[0]) video.srcObject = e.streams[0];
    };
    pc.onconnectionstatechange = () => { $("s-state").textContent = pc.connectionState; };
    await pc.setLocalDescription(await pc.createOffer());
    await waitGathering(pc);
    const body = { sdp: pc.localDescription.sdp, type: "offer", emotion: $("emotion").value,
                   identity: seed };
    const portrait = await readPortrait();
    if (portrait) body.portrait = portrait;
    if (face !== null) body.face = face;
    const resp = await fetch("/offer", { method: "POST", headers: authHeaders(), body: JSON.stringify(body) });
    const answer = await resp.json();
    if (!resp.ok) throw new Error(answer.error || resp.statusText);
    call.sessionId = answer.session_id;
    await pc.setRemoteDescription({ sdp: answer.sdp, type: answer.type });
    call.running = true;
    $("remote").requestVideoFrameCallback(function count(now, meta) {
      call.presentedCount = (call.presentedCount || 0) + 1;
      if (call.running) $("remote").requestVideoFrameCallback(count);
    });
    $("remote").requestVideoFrameCallback(onVideoFrame);
    call.timer = setInterval(refresh, 500);
    // Served by a node of a cluster: the media comes from that node, so ask the head whether it is still there.
    if (answer.server_node) call.watch = setInterval(watchServer, 2000);
    $("stop").disabled = $("interrupt").disabled = false;
  } catch (err) {
    $("error").textContent = `call failed: ${err.message}`;
    stop();
  }
}

// A call served by a cluster node: the head answers 410 once that node is lost, and the page says so.
async function watchServer() {
  if (!call.sessionId) return;
  let resp;
  try {
    resp = await fetch(`/calls/${call.sessionId}`, { headers: authHeaders() });
  } catch (err) {
    return;  // the head unreachable for a moment: asked again
  }
  if (resp.status !== 410) return;
  const body = await resp.json();
  stop();
  $("error").textContent = body.error || "the call ended because its server was lost; start a new call";
  $("s-state").textContent = "ended: server lost";
}

function stop() {
  call.running = false;
  clearInterval(call.timer);
  clearInterval(call.watch);
  if (call.pc) call.pc.close();
  call.pc = null;
  $("start").disabled = false;
  $("stop").disabled = $("interrupt").disabled = true;
  $("s-state").textContent = "idle";
}

$("start").onclick = start;
$("portrait").onchange = checkPortrait;
$("face").onchange = checkPortrait;
$("stop").onclick = stop;
$("interrupt").onclick = () => call.dc && call.dc.send(JSON.stringify({ type: "interrupt" }));
$("emotion").onchange = () => {
  if (call.dc && call.dc.readyState === "open") call.dc.send(JSON.stringify({ type: "emotion", emotion: $("emotion").value }));
};
