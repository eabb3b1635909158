// The HTTP API (docs/protocol.md): JSON requests with the session's bearer token, and
// media uploads through XMLHttpRequest for their progress events.
//
// In a cluster the page knows several nodes: the one that served it, and the others
// `GET /api/info` lists in `nodes`. Requests go to `current`, the node the chat socket is
// on (socket.js sets it at each welcome). One that cannot reach its node goes to the next
// if repeating it is harmless (GET, PUT, DELETE, and the calls marked `retry`); any other
// fails, and the node is tried after the others for a while, so trying again goes
// elsewhere. The other nodes answer this page's origin with CORS (docs/protocol.md).

const INFO_TIMEOUT = 5000; // ms for a node to answer GET /api/info while looking for one
const DOWN_FOR = 30_000; // ms a node that did not answer is tried after the others
const SAFE_METHODS = new Set(['GET', 'HEAD', 'PUT', 'DELETE']);

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message || code);
    this.status = status; // 0: the request never reached the node
    this.code = code;
  }

  get offline() {
    return this.status === 0;
  }
}

export class Api {
  constructor() {
    this.token = null;
    this.home = location.origin; // the node that served the page
    this.nodes = [this.home]; // every node known, as base URLs: ours first
    this.current = this.home; // where requests go first: the chat socket's node
    this.down = new Map(); // base URL -> when it last failed to answer
  }

  /** Remember the nodes a node listed (GET /api/info's `nodes`), after those known. */
  learn(urls) {
    for (const url of urls || []) {
      const base = String(url).replace(/\/+$/, '');
      if (/^https?:\/\//.test(base) && !this.nodes.includes(base)) this.nodes.push(base);
    }
  }

  /** The nodes to try: `first`, then the others as known; any that failed lately go last. */
  order(first) {
    const all = [first, ...this.nodes.filter((base) => base !== first)];
    const now = Date.now();
    const isDown = (base) => now - (this.down.get(base) ?? -Infinity) < DOWN_FOR;
    return [...all.filter((base) => !isDown(base)), ...all.filter(isDown)];
  }

  async request(method, path, body, query, options = {}) {
    return (await this.send(method, path, body, query, options)).data;
  }

  /** A request to the current node, or to the next ones if it may be repeated: {data, base}. */
  async send(method, path, body, query, { retry = SAFE_METHODS.has(method) } = {}) {
    let failure = null;
    for (const base of this.order(this.current)) {
      try {
        const data = await this.requestAt(base, method, path, body, query);
        this.current = base; // the one that answered, if the current one did not
        return { data, base };
      } catch (err) {
        if (!err.offline || !retry) throw err;
        failure = failure || err; // that node cannot be reached: the next one may
      }
    }
    throw failure;
  }

  async requestAt(base, method, path, body, query, timeout = 0) {
    const url = new URL(base + path);
    for (const [key, value] of Object.entries(query || {})) {
      if (value !== undefined && value !== null) url.searchParams.set(key, value);
    }
    const headers = {};
    if (this.token) headers.Authorization = `Bearer ${this.token}`;
    if (body !== undefined) headers['Content-Type'] = 'application/json';
    let response;
    try {
      response = await fetch(url, {
        method, headers, body: body === undefined ? undefined : JSON.stringify(body),
        signal: timeout ? AbortSignal.timeout(timeout) : undefined,
      });
    } catch (err) {
      this.down.set(base, Date.now());
      throw new ApiError(0, 'network', 'The node cannot be reached.');
    }
    this.down.delete(base);
    if (response.status === 204) return null;
    let data = null;
    try {
      data = await response.json();
    } catch (err) {
      if (response.ok) throw new ApiError(response.status, 'invalid_json', 'The node sent an unreadable answer.');
    }
    if (!response.ok) {
      const error = (data && data.error) || {};
      throw new ApiError(response.status, error.code || 'http_error', error.message || response.statusText);
    }
    return data;
  }

  /** A node for the chat socket: `prefer` (the one it was on) first, then the others,
   * those that failed lately last. Each is asked for GET /api/info, which names its
   * socket and the cluster's nodes; the first to answer is used: {base, info}. Throws
   * ApiError(0) when none answers. */
  async findNode(prefer = this.current) {
    for (const base of this.order(prefer)) {
      try {
        const info = await this.requestAt(base, 'GET', '/api/info', undefined, undefined, INFO_TIMEOUT);
        this.learn(info.nodes);
        return { base, info };
      } catch (err) {
        if (!err.offline) this.down.set(base, Date.now()); // it answers, but not as a node should
      }
    }
    throw new ApiError(0, 'network', 'No node can be reached.');
  }

  /** A node let the socket down (closed before its welcome): try the others first for a while. */
  markDown(base) {
    if (base) this.down.set(base, Date.now());
  }

  // node and accounts
  info() { return this.request('GET', '/api/info'); }
  register(username, password, displayName) {
    const body = { username, password };
    if (displayName) body.display_name = displayName;
    return this.request('POST', '/api/register', body);
  }
  login(username, password) { return this.request('POST', '/api/login', { username, password, device: deviceName() }); }
  logout() { return this.request('POST', '/api/logout', undefined, undefined, { retry: true }); }
  me() { return this.request('GET', '/api/me'); }

  // my account (the Settings screen)
  async updateMe(displayName) { return (await this.request('PATCH', '/api/me', { display_name: displayName })).user; }
  async updateSettings(changes) { return (await this.request('PATCH', '/api/me/settings', changes, undefined, { retry: true })).settings; }
  changePassword(current, next) {
    return this.request('POST', '/api/me/password', { current_password: current, new_password: next });
  }
  async devices() { return (await this.request('GET', '/api/me/devices')).devices; }
  revokeDevice(deviceId) { return this.request('DELETE', `/api/me/devices/${deviceId}`); }
  async blocks() { return (await this.request('GET', '/api/blocks')).users; }
  unblock(userId) { return this.request('DELETE', `/api/blocks/${userId}`); }
  block(userId) { return this.request('PUT', `/api/blocks/${userId}`); }
  async report(body) { return (await this.request('POST', '/api/reports', body)).report; }

  // users
  async searchUsers(prefix, limit = 20) { return (await this.request('GET', '/api/users', undefined, { prefix, limit })).users; }
  async user(id) { return (await this.request('GET', `/api/users/${id}`)).user; }
  presence(id) { return this.request('GET', `/api/users/${id}/presence`); }

  // chats
  async chats() { return (await this.request('GET', '/api/chats')).chats; }
  async chat(id) { return (await this.request('GET', `/api/chats/${id}`)).chat; }
  async openDirect(userId) { return (await this.request('POST', '/api/chats/direct', { user_id: userId }, undefined, { retry: true })).chat; }
  history(chatId, before, limit = 50) { return this.request('GET', `/api/chats/${chatId}/messages`, undefined, { before, limit }); }
  async updateChat(chatId, changes) { return (await this.request('PATCH', `/api/chats/${chatId}`, changes)).chat; }
  searchMessages(q, before, chat) { return this.request('GET', '/api/search', undefined, { q, before, chat, limit: 20 }); }
  async setMyPhoto(mediaId) {
    return (await (mediaId ? this.request('PUT', '/api/me/photo', { media: mediaId }) : this.request('DELETE', '/api/me/photo'))).user;
  }
  async setGroupPhoto(chatId, mediaId) {
    const path = `/api/chats/${chatId}/photo`;
    return (await (mediaId ? this.request('PUT', path, { media: mediaId }) : this.request('DELETE', path))).chat;
  }
  async chatPrefs(chatId, changes) { return (await this.request('PATCH', `/api/chats/${chatId}/prefs`, changes, undefined, { retry: true })).chat; }
  async clearChat(chatId) { return (await this.request('POST', `/api/chats/${chatId}/clear`)).chat; }
  deleteChat(chatId) { return this.request('POST', `/api/chats/${chatId}/delete`); }
  async react(chatId, seq, emoji) {
    const path = `/api/chats/${chatId}/messages/${seq}/reaction`;
    return (await (emoji ? this.request('PUT', path, { emoji }) : this.request('DELETE', path))).reaction;
  }
  async reactions(chatId, from, to) { return (await this.request('GET', `/api/chats/${chatId}/reactions`, undefined, { from, to })).reactions; }
  star(chatId, seq, starred) { return this.request(starred ? 'PUT' : 'DELETE', `/api/chats/${chatId}/messages/${seq}/star`); }
  starred(offset, limit = 50) { return this.request('GET', '/api/starred', undefined, { offset, limit }); }
  deleteForMe(chatId, seqs) { return this.request('POST', `/api/chats/${chatId}/messages/delete`, { seqs }, undefined, { retry: true }); }
  receipts(chatId, seq) { return this.request('GET', `/api/chats/${chatId}/messages/${seq}/receipts`); }

  // groups
  async createGroup(title, members) { return (await this.request('POST', '/api/groups', { title, members })).chat; }
  async members(chatId) { return (await this.request('GET', `/api/chats/${chatId}/members`)).members; }
  async addMembers(chatId, users) { return (await this.request('POST', `/api/chats/${chatId}/members`, { users })).chat; }
  removeMember(chatId, userId) { return this.request('DELETE', `/api/chats/${chatId}/members/${userId}`); }
  leave(chatId) { return this.request('POST', `/api/chats/${chatId}/leave`); }
  setAdmin(chatId, userId, admin) { return this.request(admin ? 'PUT' : 'DELETE', `/api/chats/${chatId}/admins/${userId}`); }

  // push targets (docs/push.md)
  vapidKey() { return this.request('GET', '/api/push/vapid'); }
  async addPushTarget(target) { return (await this.request('POST', '/api/push/targets', target, undefined, { retry: true })).target; }
  deletePushTarget(id) { return this.request('DELETE', `/api/push/targets/${id}`); }

  // media
  /** Signed URLs of a media item, made absolute on the node that signed them (`node`). */
  async signedMedia(id) {
    const { data: signed, base } = await this.send('GET', `/api/media/${id}/signed`);
    for (const key of ['url', 'thumbnail_url']) if (signed[key]) signed[key] = new URL(signed[key], base).href;
    return { ...signed, node: base };
  }

  /** Upload a file as the raw request body. Returns {promise, abort}; the promise gives the
   * media object. A node that cannot be reached (or fails mid-upload) is left for the next:
   * a copy it may have stored is never sent in a message, so the node collects it. */
  upload(file, onProgress) {
    let xhr = null;
    let aborted = false;
    const attempt = (base) => new Promise((resolve, reject) => {
      xhr = new XMLHttpRequest();
      const url = new URL(`${base}/api/media`);
      url.searchParams.set('name', file.name || 'file');
      xhr.open('POST', url);
      if (this.token) xhr.setRequestHeader('Authorization', `Bearer ${this.token}`);
      xhr.setRequestHeader('Content-Type', file.type || 'application/octet-stream');
      xhr.responseType = 'json';
      xhr.upload.onprogress = (e) => { if (e.lengthComputable && onProgress) onProgress(e.loaded, e.total); };
      xhr.onload = () => {
        this.down.delete(base);
        this.current = base;
        const data = xhr.response;
        if (xhr.status >= 200 && xhr.status < 300 && data && data.media) resolve(data.media);
        else {
          const error = (data && data.error) || {};
          reject(new ApiError(xhr.status, error.code || 'http_error', error.message || 'The upload failed.'));
        }
      };
      xhr.onerror = () => {
        this.down.set(base, Date.now());
        reject(new ApiError(0, 'network', 'The upload was interrupted.'));
      };
      xhr.onabort = () => reject(new ApiError(0, 'aborted', 'The upload was cancelled.'));
      xhr.send(file);
    });
    const promise = (async () => {
      let failure = null;
      for (const base of this.order(this.current)) {
        if (aborted) throw new ApiError(0, 'aborted', 'The upload was cancelled.');
        try {
          return await attempt(base);
        } catch (err) {
          if (err.code !== 'network' || aborted) throw err;
          failure = failure || err;
        }
      }
      throw failure;
    })();
    return { promise, abort: () => { aborted = true; if (xhr) xhr.abort(); } };
  }
}

function deviceName() {
  const ua = navigator.userAgent;
  const browser = /Firefox\//.test(ua) ? 'Firefox' : /Edg\//.test(ua) ? 'Edge' : /Chrom/.test(ua) ? 'Chromium' : /Safari\//.test(ua) ? 'Safari' : 'Browser';
  return `${browser} (web)`;
}
