/* CX Bridge web call widget.
 *
 *   <script src="https://API/widget.js" data-bot="BOT_ID" data-key="WIDGET_KEY"></script>
 *
 * Optional attributes: data-api (API base URL; default: this script's origin), data-target
 * (id of an element to render into; default: a floating panel at the bottom right) and
 * data-ice-servers (JSON array of RTCIceServer; default: none, the engine is ICE-lite).
 * Plain DOM, no dependencies, nothing loaded from anywhere but the API and the engine.
 * Every script tag renders its own widget; each is pushed onto window.cxbWidgets.
 */
(function () {
  'use strict';

  // Captured synchronously: document.currentScript is only set while this runs.
  const script = document.currentScript;
  if (!script) {
    console.error('cxb widget: load it with a classic <script src=…> tag');
    return;
  }
  const attr = (name) => (script.getAttribute(name) || '').trim();
  const bot = attr('data-bot');
  const key = attr('data-key');
  const api = (attr('data-api') || originOf(script.src)).replace(/\/+$/, '');
  const targetId = attr('data-target');
  const iceServers = parseIceServers(attr('data-ice-servers'));
  const MIC = { audio: { echoCancellation: true, noiseSuppression: true, autoGainControl: true } };
  const CANCELLED = new Error('cancelled');

  const CSS = [
    '.cxb-dock{position:fixed;right:20px;bottom:20px;z-index:2147483000;display:flex;flex-direction:column;gap:12px;align-items:flex-end}',
    '.cxb-widget{display:flex;flex-direction:column;align-items:flex-start;gap:8px;font:14px/1.4 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1f2933}',
    '.cxb-dock .cxb-widget{align-items:flex-end}',
    '.cxb-widget *{box-sizing:border-box}',
    '.cxb-widget [hidden]{display:none!important}',
    '.cxb-panel{width:300px;max-width:calc(100vw - 40px);padding:12px;background:#fff;border:1px solid #d9dee3;border-radius:12px;box-shadow:0 6px 24px rgba(0,0,0,.15);text-align:left}',
    '.cxb-state{font-weight:600;margin:0 0 8px}',
    '.cxb-widget[data-state=error] .cxb-state{color:#b42318}',
    '.cxb-row{display:flex;gap:8px}',
    '.cxb-widget button{font:inherit;cursor:pointer;border:0;border-radius:999px;padding:8px 14px}',
    '.cxb-widget button:focus-visible{outline:2px solid #0b6bcb;outline-offset:2px}',
    '.cxb-call{background:#0b6bcb;color:#fff;font-weight:600!important;padding:12px 20px!important;box-shadow:0 4px 14px rgba(0,0,0,.2)}',
    '.cxb-mute{background:#e4e7eb;color:#1f2933}',
    '.cxb-mute[aria-pressed=true]{background:#fde68a}',
    '.cxb-hangup{background:#d92d20;color:#fff}',
    '.cxb-transcript{list-style:none;margin:10px 0 0;padding:0;max-height:180px;overflow-y:auto}',
    '.cxb-transcript:empty{display:none}',
    '.cxb-line{margin:4px 0;word-wrap:break-word}',
    '.cxb-line b{margin-right:4px}',
    '.cxb-line[data-role=bot] b{color:#0b6bcb}',
  ].join('\n');

  function originOf(src) {
    try { return new URL(src, location.href).origin; } catch (e) { return location.origin; }
  }

  function parseIceServers(text) {
    if (!text) return [];
    try {
      const servers = JSON.parse(text);
      if (Array.isArray(servers)) return servers;
    } catch (e) { /* reported below */ }
    console.warn('cxb widget: data-ice-servers is not a JSON array; using none');
    return [];
  }

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text) node.textContent = text;
    return node;
  }

  function injectStyle() {
    if (document.getElementById('cxb-style')) return;
    const style = el('style');
    style.id = 'cxb-style';
    style.textContent = CSS;
    document.head.appendChild(style);
  }

  // The element the widget goes into: data-target, else the shared floating dock.
  function container() {
    const target = targetId && document.getElementById(targetId);
    if (target) return target;
    if (targetId) console.warn('cxb widget: no element #' + targetId + '; floating instead');
    let dock = document.querySelector('.cxb-dock');
    if (!dock) {
      dock = el('div', 'cxb-dock');
      document.body.appendChild(dock);
    }
    return dock;
  }

  // fetch without cookies; a non-2xx answer throws its JSON error's message.
  async function request(url, init) {
    let res;
    try {
      res = await fetch(url, Object.assign({ credentials: 'omit' }, init));
    } catch (e) {
      throw new Error('network error: could not reach the server');
    }
    if (!res.ok) {
      let message = 'request failed (HTTP ' + res.status + ')';
      let code = null;
      try {
        const body = await res.json();
        if (body && body.error) {
          code = body.error.code || null;
          if (body.error.message) message = String(body.error.message);
        }
      } catch (e) { /* not JSON */ }
      const err = new Error(message);
      err.code = code;
      err.status = res.status;
      throw err;
    }
    return res;
  }

  // Resolves once ICE gathering is complete, or after `ms` (the engine takes no trickle).
  function iceGathered(pc, ms) {
    return new Promise((resolve) => {
      if (pc.iceGatheringState === 'complete') return resolve();
      const done = () => {
        clearTimeout(timer);
        pc.removeEventListener('icegatheringstatechange', check);
        resolve();
      };
      const check = () => { if (pc.iceGatheringState === 'complete') done(); };
      const timer = setTimeout(done, ms);
      pc.addEventListener('icegatheringstatechange', check);
    });
  }

  function mount() {
    injectStyle();
    const root = el('div', 'cxb-widget');
    const panel = el('div', 'cxb-panel');
    const stateLine = el('p', 'cxb-state');
    stateLine.setAttribute('role', 'status');
    stateLine.setAttribute('aria-live', 'polite');
    const row = el('div', 'cxb-row');
    const muteBtn = el('button', 'cxb-mute', 'Mute');
    const hangBtn = el('button', 'cxb-hangup', 'Hang up');
    const list = el('ol', 'cxb-transcript');
    list.setAttribute('aria-label', 'Transcript');
    const audio = el('audio', 'cxb-audio');
    audio.autoplay = true;
    audio.setAttribute('playsinline', '');
    const callBtn = el('button', 'cxb-call', 'Talk to us');
    [muteBtn, hangBtn, callBtn].forEach((b) => { b.type = 'button'; });
    row.append(muteBtn, hangBtn);
    panel.append(stateLine, row, list, audio);
    root.append(panel, callBtn);
    container().appendChild(root);

    let state = 'idle';
    let stateText = '';
    let configError = null;
    let showTranscript = true;
    let muted = false;
    let transcript = [];
    let lastCallId = null;
    let call = null; // the current attempt: {pc, mic, stream, resource, callId, lost}

    function setState(next, text) {
      state = next;
      stateText = text;
      root.setAttribute('data-state', next);
      stateLine.textContent = text;
      panel.hidden = next === 'idle';
      const live = next === 'connecting' || next === 'listening' || next === 'speaking';
      row.hidden = !live;
      callBtn.hidden = live;
    }

    function setMuted(m) {
      muted = m;
      if (call && call.mic) call.mic.getAudioTracks().forEach((t) => { t.enabled = !m; });
      muteBtn.textContent = m ? 'Unmute' : 'Mute';
      muteBtn.setAttribute('aria-pressed', String(m));
    }

    function addLine(role, text) {
      role = String(role || '');
      transcript.push({ role: role, text: text });
      if (!showTranscript) return;
      const line = el('li', 'cxb-line');
      line.setAttribute('data-role', role);
      line.append(el('b', '', role === 'bot' ? 'Bot:' : 'You:'), el('span', '', text));
      list.appendChild(line);
      list.scrollTop = list.scrollHeight;
    }

    function onMessage(data) {
      let m;
      try { m = JSON.parse(data); } catch (e) { return; }
      if (!m || typeof m !== 'object') return;
      if (m.type === 'speaking') {
        setState(m.speaking ? 'speaking' : 'listening', m.speaking ? 'bot speaking' : 'listening');
      } else if (m.type === 'transcript' && typeof m.text === 'string') {
        addLine(m.role, m.text);
      }
    }

    // Releases everything attempt `c` holds; safe to call more than once.
    function cleanup(c) {
      clearTimeout(c.lost);
      const url = c.resource;
      c.resource = null;
      const deleted = url
        ? fetch(url, { method: 'DELETE', keepalive: true, credentials: 'omit' }).then(() => {}, () => {})
        : Promise.resolve();
      if (c.pc) c.pc.close();
      if (c.mic) c.mic.getTracks().forEach((t) => t.stop());
      if (c.stream && audio.srcObject === c.stream) audio.srcObject = null;
      return deleted;
    }

    // Ends attempt `c` if it is still the current one, showing `text`.
    function end(c, next, text) {
      if (call !== c) return Promise.resolve();
      call = null;
      setState(next, text);
      return cleanup(c);
    }

    function watch(c) {
      if (call !== c) return;
      const s = c.pc.connectionState;
      clearTimeout(c.lost);
      if (s === 'failed' || s === 'closed') end(c, 'ended', 'call ended');
      else if (s === 'disconnected') c.lost = setTimeout(() => end(c, 'ended', 'call ended'), 5000);
      else if (s === 'connected' && state === 'connecting') setState('listening', 'listening');
    }

    function wireChannel(c, dc) {
      dc.onopen = () => { if (call === c && state === 'connecting') setState('listening', 'listening'); };
      dc.onclose = () => { end(c, 'ended', 'call ended'); };
      dc.onmessage = (ev) => { if (call === c) onMessage(ev.data); };
    }

    async function start() {
      if (call) return;
      if (configError) return setState('error', configError);
      const c = call = { pc: null, mic: null, stream: null, resource: null, callId: null, lost: null };
      const live = () => { if (call !== c) throw CANCELLED; };
      transcript = [];
      lastCallId = null;
      list.textContent = '';
      setMuted(false);
      setState('connecting', 'connecting…');
      try {
        if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia || !window.RTCPeerConnection) {
          throw new Error('calls need a browser with WebRTC on an HTTPS page');
        }
        try {
          c.mic = await navigator.mediaDevices.getUserMedia(MIC);
        } catch (e) {
          throw new Error(e && e.name === 'NotFoundError' ? 'no microphone found' : 'microphone blocked');
        }
        live();
        setMuted(muted);
        const session = await (await request(api + '/v1/widget/sessions', {
          method: 'POST',
          headers: { 'Content-Type': 'application/json' },
          body: JSON.stringify({ bot_id: bot, key: key }),
        })).json();
        live();
        c.callId = lastCallId = session.call_id || null;
        if (session.button_text) callBtn.textContent = session.button_text;
        if (typeof session.show_transcript === 'boolean') showTranscript = session.show_transcript;
        list.hidden = !showTranscript;

        const pc = c.pc = new RTCPeerConnection({ iceServers: iceServers });
        pc.addTransceiver(c.mic.getAudioTracks()[0], { direction: 'sendrecv' });
        pc.ontrack = (ev) => {
          if (call !== c) return;
          c.stream = ev.streams[0] || new MediaStream([ev.track]);
          audio.srcObject = c.stream;
          audio.play().catch(() => {});
        };
        wireChannel(c, pc.createDataChannel('cxb'));
        pc.ondatachannel = (ev) => { ev.channel.onmessage = (m) => { if (call === c) onMessage(m.data); }; };
        pc.onconnectionstatechange = () => watch(c);
        await pc.setLocalDescription(await pc.createOffer());
        live();
        await iceGathered(pc, 2000);
        live();

        const res = await request(session.webrtc_url, {
          method: 'POST',
          headers: { Authorization: 'Bearer ' + session.token, 'Content-Type': 'application/sdp' },
          body: pc.localDescription.sdp,
        });
        const where = res.headers.get('Location');
        if (where) c.resource = new URL(where, session.webrtc_url).href;
        const sdp = await res.text();
        live();
        await pc.setRemoteDescription({ type: 'answer', sdp: sdp });
        live();
        watch(c);
      } catch (e) {
        if (e === CANCELLED) return void cleanup(c);
        await end(c, 'error', (e && e.message) || 'the call could not be set up');
      }
    }

    function hangUp() {
      return call ? end(call, 'ended', 'call ended') : Promise.resolve();
    }

    callBtn.addEventListener('click', () => { start(); });
    hangBtn.addEventListener('click', () => { hangUp(); });
    muteBtn.addEventListener('click', () => setMuted(!muted));
    window.addEventListener('pagehide', () => { hangUp(); });
    setState('idle', '');

    if (!bot || !key) {
      configError = 'widget misconfigured: data-bot and data-key are required';
    } else {
      request(api + '/v1/widget/config?bot_id=' + encodeURIComponent(bot) + '&key=' + encodeURIComponent(key))
        .then((res) => res.json())
        .then((config) => {
          if (config.button_text) callBtn.textContent = String(config.button_text);
          if (typeof config.show_transcript === 'boolean') showTranscript = config.show_transcript;
        })
        .catch((e) => {
          // A wrong bot or key (404) fails the same way later: refuse the click up front. Any
          // other failure (a network error, or a 403 because a same-origin GET carries no
          // Origin header) is left to the session request, whose answer is authoritative.
          if (e.status === 404) configError = e.message;
          else console.warn('cxb widget: config: ' + e.message);
        });
    }

    const widget = Object.freeze({
      get state() { return state; },
      get stateText() { return stateText; },
      get callId() { return lastCallId; },
      get transcript() { return transcript.slice(); },
      get audio() { return audio; },
      get pc() { return call ? call.pc : null; },
      get muted() { return muted; },
      root: root,
      start: () => start(),
      hangUp: hangUp,
    });
    window.cxbWidgets = window.cxbWidgets || [];
    window.cxbWidgets.push(widget);
  }

  if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', mount);
  else mount();
})();
