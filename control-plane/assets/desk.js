// The Agent Desk's live takeover: on a handoff whose call is still up, "Talk to the caller"
// asks the API for a one-use takeover token (POST /desk/ID/takeover, the console's form
// token), offers the microphone to the engine carrying the call (WHIP style, as the widget
// does) and plays the caller through an <audio> element. The bot is silent while the person
// is on; "Hang up" leaves, and the bot takes the caller back.
(function () {
  "use strict";
  var box = document.getElementById("takeover");
  if (!box) return;
  var take = document.getElementById("take-call");
  var leave = document.getElementById("leave-call");
  var state = document.getElementById("take-state");
  var audio = document.getElementById("take-audio");
  var pc = null, mic = null, resource = null;

  function say(text, cls) {
    state.textContent = text;
    box.setAttribute("data-state", cls);
  }

  function gathered(peer, ms) {
    return new Promise(function (resolve) {
      if (peer.iceGatheringState === "complete") return resolve();
      var timer = setTimeout(resolve, ms);
      peer.addEventListener("icegatheringstatechange", function () {
        if (peer.iceGatheringState === "complete") { clearTimeout(timer); resolve(); }
      });
    });
  }

  async function failed(res) {
    var message = "status " + res.status;
    try { var body = await res.json(); message = (body.error && body.error.message) || message; } catch (e) { /* not JSON */ }
    throw new Error(message);
  }

  function stop(text, cls) {
    if (resource) fetch(resource, { method: "DELETE", keepalive: true, credentials: "omit" }).catch(function () {});
    resource = null;
    if (pc) pc.close();
    pc = null;
    if (mic) mic.getTracks().forEach(function (t) { t.stop(); });
    mic = null;
    audio.srcObject = null;
    take.hidden = false;
    leave.hidden = true;
    say(text, cls);
  }

  async function start() {
    take.hidden = true;
    say("Connecting…", "connecting");
    try {
      mic = await navigator.mediaDevices.getUserMedia({ audio: { echoCancellation: true, noiseSuppression: true, autoGainControl: true } });
      var form = new URLSearchParams({ _csrf: box.getAttribute("data-csrf") });
      var res = await fetch("/desk/" + encodeURIComponent(box.getAttribute("data-handoff")) + "/takeover", { method: "POST", credentials: "same-origin", body: form });
      if (!res.ok) await failed(res);
      var grant = await res.json();
      // Taking the call claims the handoff.
      var pill = document.getElementById("status");
      if (pill && grant.handoff) pill.textContent = grant.handoff.status;
      var claim = document.getElementById("claim");
      if (claim) claim.hidden = true;
      pc = new RTCPeerConnection({ iceServers: [] });
      pc.addTransceiver(mic.getAudioTracks()[0], { direction: "sendrecv" });
      pc.ontrack = function (ev) {
        audio.srcObject = ev.streams[0] || new MediaStream([ev.track]);
        audio.play().catch(function () {});
      };
      pc.onconnectionstatechange = function () {
        if (!pc) return;
        if (pc.connectionState === "connected") say("On the call: the bot is silent while you talk.", "live");
        if (pc.connectionState === "failed" || pc.connectionState === "closed") stop("The call ended.", "ended");
      };
      await pc.setLocalDescription(await pc.createOffer());
      await gathered(pc, 2000);
      var answer = await fetch(grant.webrtc_url, {
        method: "POST",
        credentials: "omit",
        headers: { Authorization: "Bearer " + grant.token, "Content-Type": "application/sdp" },
        body: pc.localDescription.sdp,
      });
      if (!answer.ok) await failed(answer);
      var where = answer.headers.get("Location");
      if (where) resource = new URL(where, grant.webrtc_url).href;
      await pc.setRemoteDescription({ type: "answer", sdp: await answer.text() });
      leave.hidden = false;
    } catch (e) {
      stop("Could not join: " + ((e && e.message) || "the call could not be set up"), "error");
    }
  }

  take.addEventListener("click", function () { start(); });
  leave.addEventListener("click", function () { stop("You left; the bot has the caller again.", "ended"); });
  window.addEventListener("pagehide", function () { if (pc) stop("", "ended"); });
})();
