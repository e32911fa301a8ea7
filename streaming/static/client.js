// actorcast browser client: one WebRTC call, control over a data channel, and live stats measured in the page.
"use strict";

const $ = (id) => document.getElementById(id);
const call = { pc: null, dc: null, frames: [], presented: [], latencies: [], offset: null, rtt: null,
               server: null, videoDelays: [], avOffset: null, running: false, shown: [] };
window.actorcast = call;  // tests read call.stats()

const nowEpoch = () => performance.timeOrigin + performance.now();
// The server's arrival time of audio is taken after aiortc's receive buffer (4 packets of 20 ms prefetched):
// capture -> server arrival = half the round trip + one packet being filled + that buffer (an estimate).
const UPLINK_FIXED_MS = 20 + 60;

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
    for (const f of msg.frames) call.frames.push(f);  // [sent_ms, latency_ms, index, degraded]
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
    if (f && f[1] !== null && call.offset !== null) {
      const arrivalServer = f[0] - f[1];
      const shownServer = performance.timeOrigin + meta.shown + call.offset;
      call.latencies.push(shownServer - arrivalServer + call.rtt / 2 + UPLINK_FIXED_MS);
      if (call.latencies.length > 1500) call.latencies.shift();
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
  const sender = call.server ? call.server.av_offset_ms : null;
  // same content: voice plays at (send - sender offset) + audio buffer, video at send + video buffer + render
  call.avOffset = audioDelay !== null && videoDelay !== null && sender !== null ? audioDelay - videoDelay - sender : null;
  $("s-fps").textContent = fps === null ? "–" : fps.toFixed(1);
  $("s-frames").textContent = String(call.presentedCount || 0);
  $("s-latency").textContent = `${fmt(pct(call.latencies, 0.5))} / ${fmt(pct(call.latencies, 0.95))}`;
  if (call.server) {
    const s = call.server.server_latency_ms;
    $("s-server").textContent = `${fmt(s.p50)} / ${fmt(s.p95)}`;
    $("s-degraded").textContent = String(call.server.degraded_frames);
  }
  $("s-av").textContent = fmt(call.avOffset);
  $("s-rtt").textContent = fmt(call.rtt);
  call.fps = fps;
}

call.stats = () => ({
  state: $("s-state").textContent, fps: call.fps, presented: call.presentedCount || 0,
  latency_ms: { p50: pct(call.latencies, 0.5), p95: pct(call.latencies, 0.95), n: call.latencies.length },
  av_offset_ms: call.avOffset, rtt_ms: call.rtt, server: call.server,
  av_parts_ms: { audio_playout: call.audioDelay || null, sender: call.server ? call.server.av_offset_ms : null,
                 video_display: call.videoDelays.length ? call.videoDelays.reduce((a, b) => a + b) / call.videoDelays.length : null },
});

async function start() {
  $("error").textContent = "";
  $("start").disabled = true;
  try {
    const mic = await navigator.mediaDevices.getUserMedia({ audio: true, video: false });
    const pc = new RTCPeerConnection({ iceServers: [] });  // loopback/LAN: no STUN contacted
    call.pc = pc;
    mic.getTracks().forEach((t) => pc.addTrack(t, mic));
    pc.addTransceiver("video", { direction: "recvonly" });
    call.dc = pc.createDataChannel("control");
    call.dc.onmessage = onMessage;
    pc.ontrack = (e) => {
      const video = $("remote");
      if (video.srcObject !== e.streams[0]) video.srcObject = e.streams[0];
    };
    pc.onconnectionstatechange = () => { $("s-state").textContent = pc.connectionState; };
    await pc.setLocalDescription(await pc.createOffer());
    await waitGathering(pc);
    const body = { sdp: pc.localDescription.sdp, type: "offer", emotion: $("emotion").value,
                   identity_seed: Number($("identity").value) };
    const portrait = await readPortrait();
    if (portrait) body.portrait = portrait;
    const headers = { "Content-Type": "application/json" };
    if ($("token").value) headers.Authorization = `Bearer ${$("token").value}`;
    const resp = await fetch("/offer", { method: "POST", headers, body: JSON.stringify(body) });
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
    $("stop").disabled = $("interrupt").disabled = false;
  } catch (err) {
    $("error").textContent = `call failed: ${err.message}`;
    stop();
  }
}

function stop() {
  call.running = false;
  clearInterval(call.timer);
  if (call.pc) call.pc.close();
  call.pc = null;
  $("start").disabled = false;
  $("stop").disabled = $("interrupt").disabled = true;
  $("s-state").textContent = "idle";
}

$("start").onclick = start;
$("stop").onclick = stop;
$("interrupt").onclick = () => call.dc && call.dc.send(JSON.stringify({ type: "interrupt" }));
$("emotion").onchange = () => {
  if (call.dc && call.dc.readyState === "open") call.dc.send(JSON.stringify({ type: "emotion", emotion: $("emotion").value }));
};
