// The chat socket (docs/protocol.md, "The chat socket"): hello with cursors, replay,
// cumulative `received` acknowledgements, the outbox, and reconnecting with backoff. In a
// cluster it reconnects to the node it was on if that one answers, else to another it
// knows (api.js; docs/web-client.md, "Connection, resync, outbox").
//
// Cursors: per chat, the highest seq this page holds with no gap below it. The node sends
// each chat's entries in order and without gaps, so the highest seq seen on the socket (or
// seeded from the chat list, whose messages are fetched by history) is that cursor. On
// every reconnect the hello carries them and the node replays exactly what is missing.
//
// Events: `status` (detail: {state, retryAt, code}), `event` (detail: a server event), `sent`
// (detail: {ack, item}), `failed` (detail: {item, error}), `unauthorized`.

const RETRYABLE = new Set(['rate_limited', 'unavailable', 'internal', 'too_many_connections']);
const WELCOME_TIMEOUT = 10_000;
const PING_AFTER = 20_000; // idle time before a ping
const DEAD_AFTER = 45_000; // no frame at all for this long: the connection is gone
const MAX_BACKOFF = 15_000;
const CONTROL_DELAY = 50; // ms to gather `received` and `read` into one frame (the node limits frames per second)
const READ_RETRY_DELAY = 2000; // ms before reads are sent again after a retryable error without `ref`

export class ChatSocket extends EventTarget {
  constructor(api, outbox) {
    super();
    this.api = api;
    this.outbox = outbox;
    this.cursors = new Map();
    this.state = 'idle'; // idle | connecting | online | offline | closed
    this.ws = null;
    this.ready = false; // welcome received on the current socket
    this.attempt = 0;
    this.retryTimer = null;
    this.maxEvents = 256;
    this.serverOffset = 0; // server clock minus ours, from the welcome
    this.lastFrame = 0;
    this.stopped = true;
    this.heartbeat = null;
    this.node = null; // the base URL of the node the socket is (or was last) on (api.js)
    this.control = new Map(); // "received|read:<chat>" -> the event to send, highest seq only
    this.controlTimer = null;
    // `read`s sent on this socket that no `read` event of ours has confirmed yet, and those
    // of earlier sockets (maybe lost with them), for session.js to send again if still needed.
    this.unconfirmed = new Map(); // chat -> seq
    this.carried = new Map(); // chat -> seq
    this.readRetryTimer = null;
    this.welcomed = false; // a welcome came on some socket already
    this.onOnline = () => this.retryNow();
    this.onOffline = () => this.drop();
  }

  start(token) {
    this.token = token;
    this.stopped = false;
    window.addEventListener('online', this.onOnline);
    window.addEventListener('offline', this.onOffline);
    this.heartbeat = setInterval(() => this.checkAlive(), 5000);
    this.connect();
  }

  stop() {
    this.stopped = true;
    window.removeEventListener('online', this.onOnline);
    window.removeEventListener('offline', this.onOffline);
    clearInterval(this.heartbeat);
    clearTimeout(this.retryTimer);
    clearTimeout(this.controlTimer);
    clearTimeout(this.readRetryTimer);
    this.readRetryTimer = null;
    if (this.ws) {
      const ws = this.ws;
      this.detach();
      ws.close(1000);
    }
    this.setState('closed');
  }

  /** The page holds a chat's entries up to `seq` (from the chat list and history). */
  seed(chatId, seq) {
    if (!(this.cursors.get(chatId) >= seq)) this.cursors.set(chatId, seq);
  }

  setState(state, extra = {}) {
    this.state = state;
    this.dispatchEvent(new CustomEvent('status', { detail: { state, ...extra } }));
  }

  emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }

  /** Open a socket on a node that answers: the one it was on, else another of the cluster. */
  async connect() {
    clearTimeout(this.retryTimer);
    if (this.stopped || this.ws) return;
    this.setState('connecting');
    let found;
    try {
      found = await this.api.findNode(this.node || undefined);
    } catch (err) {
      this.scheduleRetry();
      return;
    }
    if (this.stopped || this.ws) return;
    let ws;
    try {
      ws = new WebSocket(found.info.ws_url);
    } catch (err) {
      this.api.markDown(found.base);
      this.scheduleRetry();
      return;
    }
    this.ws = ws;
    this.node = found.base;
    this.ready = false;
    this.lastFrame = Date.now();
    ws.onopen = () => {
      ws.send(JSON.stringify({ type: 'hello', token: this.token, cursors: Object.fromEntries(this.cursors) }));
    };
    ws.onmessage = (e) => this.onFrame(ws, e.data);
    ws.onclose = (e) => this.onClose(ws, e.code);
    ws.onerror = () => {}; // a close event follows
  }

  detach() {
    const ws = this.ws;
    if (!ws) return;
    ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null;
    this.ws = null;
    if (!this.ready) this.api.markDown(this.node); // no welcome from it: the others first next time
    this.ready = false;
    for (const [chat, seq] of this.unconfirmed) this.carry(chat, seq);
    this.unconfirmed.clear();
    for (const item of this.outbox.items) if (item.state === 'sending') item.state = 'queued';
    this.outbox.save();
  }

  /** Give up on the current socket now (offline, or silent for too long) and reconnect. */
  drop() {
    const ws = this.ws;
    if (!ws) return;
    this.detach();
    try {
      ws.close(1000);
    } catch (err) { /* already closing */ }
    if (!this.stopped) this.scheduleRetry();
  }

  onClose(ws, code) {
    if (ws !== this.ws) return;
    this.detach();
    if (code === 4001 || code === 4003) {
      this.setState('closed');
      this.emit('unauthorized', { code });
      return;
    }
    if (!this.stopped) this.scheduleRetry(code);
  }

  /** Try again after a backoff; `code` is the close code that ended the last socket, if any. */
  scheduleRetry(code = null) {
    clearTimeout(this.retryTimer);
    const base = Math.min(MAX_BACKOFF, 500 * 2 ** this.attempt);
    const delay = Math.round(base * (0.5 + Math.random() / 2));
    this.attempt += 1;
    this.setState('offline', { retryAt: Date.now() + delay, code });
    this.retryTimer = setTimeout(() => this.connect(), delay);
  }

  retryNow() {
    if (this.stopped || this.ws) return;
    this.attempt = 0;
    this.connect();
  }

  checkAlive() {
    const idle = Date.now() - this.lastFrame;
    if (!this.ws || this.ws.readyState !== WebSocket.OPEN) {
      if (this.ws && idle > WELCOME_TIMEOUT) this.drop();
      return;
    }
    if (idle > DEAD_AFTER || (!this.ready && idle > WELCOME_TIMEOUT)) this.drop();
    else if (idle > PING_AFTER) this.sendFrame([{ type: 'ping' }]);
  }

  sendFrame(events) {
    if (!this.ws || this.ws.readyState !== WebSocket.OPEN || !this.ready || !events.length) return false;
    for (let i = 0; i < events.length; i += this.maxEvents) {
      const chunk = events.slice(i, i + this.maxEvents);
      this.ws.send(JSON.stringify(chunk.length === 1 ? chunk[0] : chunk));
    }
    return true;
  }

  onFrame(ws, data) {
    if (ws !== this.ws) return;
    this.lastFrame = Date.now();
    let parsed;
    try {
      parsed = JSON.parse(data);
    } catch (err) {
      return;
    }
    const events = Array.isArray(parsed) ? parsed : [parsed];
    const advanced = new Map();
    for (const event of events) {
      switch (event.type) {
        case 'welcome':
          this.onWelcome(event);
          break;
        case 'message':
          if (this.advance(event.chat, event.seq)) advanced.set(event.chat, event.seq);
          this.settle(event.from === this.userId ? event.client_msg_id : null, event);
          break;
        case 'ack':
          this.advance(event.chat, event.seq);
          this.settle(event.client_msg_id, event);
          break;
        case 'read': // our own read, from this device or another: the node has it
          if (event.user === this.userId && this.unconfirmed.get(event.chat) <= event.seq) this.unconfirmed.delete(event.chat);
          break;
        case 'error':
          if (event.ref) this.onSendError(event);
          else {
            if (RETRYABLE.has(event.code)) this.readsRefused();
            console.warn('chat socket error', event.code, event.message);
          }
          break;
        default:
          break;
      }
      this.emit('event', event);
    }
    for (const [chat, seq] of advanced) this.queueControl({ type: 'received', chat, seq });
  }

  /** `received` and `read` are cumulative: gather them, keep the highest per chat, send together. */
  queueControl(event) {
    const key = `${event.type}:${event.chat}`;
    const held = this.control.get(key);
    if (!held || held.seq < event.seq) this.control.set(key, event);
    if (!this.controlTimer) this.controlTimer = setTimeout(() => this.flushControl(), CONTROL_DELAY);
  }

  flushControl() {
    this.controlTimer = null;
    if (!this.control.size || !this.sendFrame([...this.control.values()])) return; // they wait for the next welcome
    for (const event of this.control.values()) {
      if (event.type === 'read' && !(this.unconfirmed.get(event.chat) >= event.seq)) this.unconfirmed.set(event.chat, event.seq);
    }
    this.control.clear();
  }

  /** A frame without `ref` was refused for a moment (`unavailable`: in a cluster, its
   * chat's node was changing hands): it may have been a `read`. The reads not confirmed
   * by then go to session.js (`retryReads`) to be sent again; a `read` is cumulative, so
   * one sent twice does no harm. (On a new socket they are carried instead.) */
  readsRefused() {
    if (this.readRetryTimer || !this.unconfirmed.size) return;
    this.readRetryTimer = setTimeout(() => {
      this.readRetryTimer = null;
      if (this.ready && this.unconfirmed.size) this.emit('retryReads', new Map(this.unconfirmed));
    }, READ_RETRY_DELAY);
  }

  carry(chat, seq) {
    if (!(this.carried.get(chat) >= seq)) this.carried.set(chat, seq);
  }

  /** Reads from before the current socket: sent on one that is gone (unconfirmed), or never
   * sent. session.js sends them again once the chat list says they are still needed. */
  takeCarriedReads() {
    const reads = this.carried;
    this.carried = new Map();
    return reads;
  }

  advance(chatId, seq) {
    if (this.cursors.get(chatId) >= seq) return false;
    this.cursors.set(chatId, seq);
    return true;
  }

  onWelcome(event) {
    this.ready = true;
    this.attempt = 0;
    this.api.current = this.node; // HTTP calls go to the socket's node
    this.userId = event.user && event.user.id;
    if (event.limits && event.limits.max_events_per_frame) this.maxEvents = event.limits.max_events_per_frame;
    if (event.server_time) this.serverOffset = event.server_time - Date.now();
    this.setState('online');
    if (this.welcomed) {
      // Reads queued while cut off wait for the chat list too: another device may have marked
      // the chat as unread meanwhile, and any `read` would undo that (session.js).
      for (const [key, held] of this.control) {
        if (held.type === 'read') {
          this.carry(held.chat, held.seq);
          this.control.delete(key);
        }
      }
    }
    this.welcomed = true;
    // What the chat list and history gave us counts as received, too.
    for (const [chat, seq] of this.cursors) this.queueControl({ type: 'received', chat, seq });
    this.flushControl();
    this.flush();
  }

  /** An ack, or our own message coming back (replay after a lost ack): the send is done. */
  settle(clientMsgId, event) {
    if (!clientMsgId) return;
    const item = this.outbox.remove(clientMsgId);
    if (item) this.emit('sent', { ack: event, item });
  }

  onSendError(event) {
    const item = this.outbox.get(event.ref);
    if (!item) return;
    if (RETRYABLE.has(event.code)) {
      this.outbox.update(item.client_msg_id, { state: 'queued' });
      clearTimeout(this.flushTimer);
      this.flushTimer = setTimeout(() => this.flush(), 2000);
    } else {
      this.outbox.update(item.client_msg_id, { state: 'failed', error: event.message || event.code, code: event.code });
      this.emit('failed', { item, error: event });
    }
  }

  /** Queue a message (kind text, edit, delete, or media); it goes out now or once connected. */
  send(item) {
    this.outbox.add({ ...item, state: 'queued' });
    this.flush();
  }

  retry(clientMsgId) {
    this.outbox.update(clientMsgId, { state: 'queued', error: null, code: null });
    this.flush();
  }

  flush() {
    if (!this.ready) return;
    const items = this.outbox.items.filter((item) => item.state === 'queued');
    if (!items.length) return;
    const frame = items.map((item) => sendEvent(item));
    if (this.sendFrame(frame)) {
      for (const item of items) item.state = 'sending';
      this.outbox.save();
    }
  }

  typing(chatId, active) {
    return this.sendFrame([{ type: 'typing', chat: chatId, typing: active }]);
  }

  /** Everything up to `seq` in a chat was read here (sent now; if cut off, see takeCarriedReads). */
  read(chatId, seq) {
    this.queueControl({ type: 'read', chat: chatId, seq });
  }

  /** Now by the node's clock (for disappearing messages). */
  now() {
    return Date.now() + this.serverOffset;
  }
}

function sendEvent(item) {
  const event = { type: 'send', client_msg_id: item.client_msg_id, chat: item.chat, kind: item.kind };
  for (const key of ['text', 'media', 'reply_to', 'target', 'forwarded', 'mentions']) {
    if (item[key] !== undefined && item[key] !== null && item[key] !== '') event[key] = item[key];
  }
  if (event.kind === 'delete') delete event.text;
  return event;
}
