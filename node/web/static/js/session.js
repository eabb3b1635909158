// A logged-in session: loads chats and history, feeds socket events into the store,
// and carries out what the user does (send, edit, delete, read, groups, timers).

import { ChatSocket } from './socket.js';
import { Outbox } from './outbox.js';
import { CONTENT_KINDS } from './store.js';
import { setLimits } from './errors.js';

const TYPING_EVERY = 2500; // ms between typing hints while someone types
const TYPING_IDLE = 4000; // ms without a keystroke before "stopped typing"
const MEMBERSHIP_EVENTS = new Set(['created', 'added', 'removed', 'left', 'promoted', 'demoted']);

export class Session extends EventTarget {
  constructor(api, store, auth) {
    super();
    this.api = api;
    this.store = store;
    this.auth = auth; // {token, user, device_id}
    this.outbox = new Outbox(`chatnode.outbox.${auth.user.id}`);
    this.socket = new ChatSocket(api, this.outbox);
    this.counter = 0;
    this.typingChat = null;
    this.typingSentAt = 0;
    this.typingTimer = null;
    this.userRequests = new Map();
    this.presenceAsked = new Map(); // user id -> when their presence was last asked after a message
    this.synced = false;
    this.liveSince = null; // the node's time at the latest welcome: entries stored since are live
    this.reconnected = false;
    this.chatsLoaded = false;
  }

  // -- start and stop -----------------------------------------------------------------

  async start() {
    const { store, socket } = this;
    store.me = this.auth.user;
    store.rememberUser(this.auth.user);
    socket.userId = this.auth.user.id;
    socket.addEventListener('status', (e) => {
      store.connection = e.detail;
      if (e.detail.state !== 'online') this.synced = false;
      store.changed('connection');
    });
    socket.addEventListener('event', (e) => this.onEvent(e.detail));
    socket.addEventListener('sent', (e) => this.onSent(e.detail));
    socket.addEventListener('failed', () => store.changed('outbox'));
    socket.addEventListener('retryReads', (e) => this.retryReads(e.detail));
    socket.addEventListener('unauthorized', (e) => this.dispatchEvent(new CustomEvent('unauthorized', { detail: e.detail })));
    this.onVisible = () => {
      if (document.visibilityState === 'visible' && store.activeChatId) this.markRead(store.activeChatId);
    };
    document.addEventListener('visibilitychange', this.onVisible);
    try {
      const me = await this.api.me();
      store.me = me.user;
      store.settings = me.settings || {};
      store.rememberUser(me.user);
    } catch (err) {
      if (!err.offline) throw err;
    }
    await this.loadChats();
    this.loadBlocked();
    socket.start(this.auth.token);
  }

  stop() {
    clearTimeout(this.typingTimer);
    document.removeEventListener('visibilitychange', this.onVisible);
    this.socket.stop();
  }

  /** The chat list from the node, merged into the store; resolves to it (null if offline). */
  async loadChats() {
    try {
      const chats = await this.api.chats();
      this.store.setChats(chats);
      if (!this.chatsLoaded) {
        // Before the first hello: what the list covers is fetched by history, not replayed.
        // Later the socket's own cursors are the truth (the list may be ahead of the stream).
        for (const chat of chats) this.socket.seed(chat.id, chat.last_seq);
      }
      this.chatsLoaded = true;
      return chats;
    } catch (err) {
      if (!err.offline) throw err; // offline: the socket retries, and its resync fills in
      return null;
    }
  }

  // -- events from the socket ---------------------------------------------------------

  onEvent(event) {
    const { store } = this;
    switch (event.type) {
      case 'welcome':
        store.me = { ...store.me, ...event.user };
        store.limits = { ...store.limits, ...event.limits };
        setLimits(event.limits);
        this.liveSince = event.server_time || null;
        break;
      case 'synced':
        this.onSynced();
        break;
      case 'message':
        this.onMessage(event);
        break;
      case 'delivered':
        store.onDelivered(event);
        break;
      case 'read':
        store.onRead(event);
        if (event.user === store.me.id && store.chats.get(event.chat)?.unread) this.refreshChat(event.chat); // read elsewhere, partly
        break;
      case 'presence':
        store.setPresence(event);
        break;
      case 'typing':
        if (event.user !== store.me.id) store.onTyping(event);
        break;
      case 'user':
        store.onUser(event.user);
        break;
      case 'chat_prefs':
        store.applyPrefs(event.chat, event);
        break;
      case 'reaction':
        this.onReaction(event);
        break;
      case 'starred':
        store.setStarred(event.chat, event.seq, event.starred);
        break;
      case 'deleted_for_me':
        store.hideEntries(event.chat, event.seqs);
        break;
      default:
        break;
    }
  }

  onSynced() {
    const first = !this.reconnected;
    this.reconnected = true;
    this.synced = true;
    const active = this.store.activeChatId;
    if (!first || !this.chatsLoaded) {
      // Receipts, presence and reactions are not replayed: ask again for what is on screen.
      this.loadChats().then((chats) => this.resendReads(chats));
      if (active) this.loadChatDetails(active);
      for (const log of this.store.logs.values()) log.reactionsStale = true;
      if (active) this.refreshReactions(active);
    }
    if (active) this.markRead(active);
    this.store.changed('connection');
  }

  /** Reads that may have been lost with an earlier socket (socket.js, takeCarriedReads) go
   * again where the node's chat list (`chats`, fetched after `synced`) has not got them. Not
   * where the chat is marked as unread: that mark may be newer than the read (another
   * device), and any `read` clears it; so the chat stays unread rather than lose the mark. */
  resendReads(chats) {
    if (!chats) return; // offline again: they wait for the next `synced`
    const byId = new Map(chats.map((chat) => [chat.id, chat]));
    for (const [chatId, seq] of this.socket.takeCarriedReads()) {
      const chat = byId.get(chatId);
      if (chat && (chat.read_seq || 0) < seq && !chat.marked_unread) this.socket.read(chatId, seq);
    }
  }

  /** Reads the node refused for a moment (socket.js, readsRefused) go again, unless the
   * chat was marked as unread since (any `read` would clear that mark). */
  retryReads(reads) {
    for (const [chatId, seq] of reads) {
      const chat = this.store.chats.get(chatId);
      if (chat && !chat.marked_unread) this.socket.read(chatId, seq);
    }
  }

  /** A message is live (worth a notification) once the replay is over, or if it was stored
   * after this socket's welcome: live messages do not wait for a long replay to end. */
  isLive(entry) {
    return this.synced || (this.liveSince !== null && entry.ts >= this.liveSince);
  }

  onMessage(event) {
    const { store } = this;
    const { type, ...entry } = event;
    const known = store.chats.has(entry.chat);
    if (!store.applyEntry(entry.chat, entry, true)) return;
    if (entry.from) store.stopTyping(entry.chat, entry.from);
    if (entry.from && !store.users.has(entry.from)) this.ensureUser(entry.from);
    for (const id of entry.mentions || []) if (!store.users.has(id)) this.ensureUser(id);
    if (!known) this.refreshChat(entry.chat);
    if (entry.kind === 'system') this.onSystem(entry);
    if (this.synced && entry.from && entry.from !== store.me.id && CONTENT_KINDS.has(entry.kind)
        && store.chats.get(entry.chat)?.kind === 'direct' && !store.presence.get(entry.from)?.online) {
      // by writing to me, they may have made me their contact: ask again (at most every 30 s)
      const asked = this.presenceAsked.get(entry.from) || 0;
      if (Date.now() - asked > 30000) {
        this.presenceAsked.set(entry.from, Date.now());
        this.loadPresence(entry.from);
      }
    }
    if (entry.from !== store.me.id && CONTENT_KINDS.has(entry.kind)) {
      if (store.activeChatId === entry.chat && document.visibilityState === 'visible') this.markRead(entry.chat);
      else if (this.isLive(entry)) this.dispatchEvent(new CustomEvent('incoming', { detail: entry }));
    }
  }

  onSystem(entry) {
    const { store } = this;
    for (const id of entry.users || []) if (!store.users.has(id)) this.ensureUser(id);
    if (entry.by && !store.users.has(entry.by)) this.ensureUser(entry.by);
    if (MEMBERSHIP_EVENTS.has(entry.event) || ['renamed', 'ttl_changed', 'photo_changed', 'photo_removed'].includes(entry.event)) {
      this.refreshChat(entry.chat);
      if (store.members.has(entry.chat)) this.loadMembers(entry.chat);
    }
  }

  /** Our own send was stored: hold it as an entry of its chat. */
  onSent({ ack, item }) {
    const { store } = this;
    if (ack.type === 'message') {
      this.onMessage(ack); // it came back whole (a replay after a lost ack)
      return;
    }
    const log = store.log(item.chat);
    const entry = { id: ack.id, chat: item.chat, seq: ack.seq, from: store.me.id, ts: ack.ts, kind: item.kind, client_msg_id: item.client_msg_id };
    if (item.text) entry.text = item.text;
    if (item.forwarded) entry.forwarded = true;
    if (item.mentions && item.mentions.length) entry.mentions = item.mentions;
    if (item.kind === 'edit' || item.kind === 'delete') {
      entry.target = item.target;
      const target = log.byId.get(item.target);
      if (target) entry.target_seq = target.seq;
    } else {
      entry.status = ack.status === 'read' || ack.status === 'delivered' ? ack.status : 'sent';
      if (item.media_info) entry.media = item.media_info;
      if (item.reply_to) {
        entry.reply_to = item.reply_to;
        const target = log.byId.get(item.reply_to);
        if (target) entry.reply_to_seq = target.seq;
      }
      const chat = store.chats.get(item.chat);
      if (chat && chat.ttl) entry.expires_at = ack.ts + chat.ttl * 1000;
    }
    store.applyEntry(item.chat, entry, true);
    store.changed('outbox', item.chat);
  }

  // -- loading ------------------------------------------------------------------------

  async refreshChat(chatId) {
    try {
      this.store.mergeChat(await this.api.chat(chatId));
    } catch (err) {
      if (err.code === 'not_member') this.store.removeChat(chatId);
    }
  }

  ensureUser(userId) {
    if (this.userRequests.has(userId)) return;
    const request = this.api.user(userId).then((user) => {
      this.store.rememberUser(user);
      this.store.changed('users');
    }).catch(() => this.userRequests.delete(userId));
    this.userRequests.set(userId, request);
  }

  async openChat(chatId) {
    const { store } = this;
    store.activeChatId = chatId;
    store.changed('active', chatId);
    if (!store.chats.has(chatId)) await this.refreshChat(chatId);
    if (!store.chats.has(chatId)) {
      store.activeChatId = null;
      store.changed('active', null);
      return;
    }
    if (!store.log(chatId).loaded) await this.loadHistory(chatId, true);
    else if (store.log(chatId).reactionsStale) this.refreshReactions(chatId);
    this.loadChatDetails(chatId);
    this.markRead(chatId);
  }

  /** A live reaction; the author is told (a notification) when it is to their message.
   * Reactions are never replayed, so one that comes during a replay is live too. */
  onReaction(event) {
    const { store } = this;
    const entry = store.applyReaction(event);
    if (event.user && !store.users.has(event.user)) this.ensureUser(event.user);
    if (entry && event.emoji && event.user !== store.me.id && entry.from === store.me.id) {
      this.dispatchEvent(new CustomEvent('reacted', { detail: { event, entry } }));
    }
  }

  /** React to an entry (null: take our reaction back). Resolves when the node has it. */
  async react(chatId, entry, emoji) {
    const event = await this.api.react(chatId, entry.seq, emoji);
    this.store.applyReaction(event);
  }

  /** Ask the node for the reactions of the entries held of a chat (they are not replayed). */
  async refreshReactions(chatId) {
    const log = this.store.logs.get(chatId);
    if (!log || !log.bySeq.size) return;
    const seqs = [...log.bySeq.keys()];
    const newest = Math.max(...seqs);
    const oldest = Math.max(Math.min(...seqs), newest - 999); // one request: what is near the end
    try {
      this.store.setReactions(chatId, oldest, newest, await this.api.reactions(chatId, oldest, newest));
    } catch (err) { /* asked again at the next reconnect */ }
  }

  closeChat() {
    this.stopTyping();
    this.store.activeChatId = null;
    this.store.changed('active', null);
  }

  loadChatDetails(chatId) {
    const chat = this.store.chats.get(chatId);
    if (!chat) return;
    if (chat.kind === 'group') this.loadMembers(chatId);
    else if (chat.peer) this.loadPresence(chat.peer.id);
  }

  /** Load older pages until `seq` is held (or the start of the chat is reached). */
  async loadUntil(chatId, seq) {
    const log = this.store.log(chatId);
    if (!log.loaded) await this.loadHistory(chatId, true);
    let guard = 0;
    const reached = () => Math.min(log.oldest, log.cursor || Infinity) <= seq;
    while (log.hasMore && !reached() && guard++ < 200) {
      while (log.loading) await new Promise((resolve) => { setTimeout(resolve, 50); });
      if (!log.hasMore || reached()) break;
      await this.loadHistory(chatId, false, 200);
    }
    return log.bySeq.has(seq);
  }

  async loadHistory(chatId, newest = false, limit = 50) {
    const log = this.store.log(chatId);
    if (!newest && (!log.hasMore || log.loading)) return;
    log.loading = true;
    try {
      const start = Math.min(log.oldest, log.cursor || Infinity); // the cursor: past entries deleted for us
      const before = newest || start === Infinity ? undefined : start;
      const page = await this.api.history(chatId, before, limit);
      for (const entry of page.messages) {
        for (const id of [entry.from, ...(entry.mentions || [])]) if (id && !this.store.users.has(id)) this.ensureUser(id);
      }
      this.store.mergeHistory(chatId, page.messages, page.has_more, newest, page.next_before);
    } catch (err) {
      if (!err.offline) console.warn('history', err);
    } finally {
      log.loading = false;
      this.store.changed('messages', chatId);
    }
  }

  async loadMembers(chatId) {
    try {
      this.store.setMembers(chatId, await this.api.members(chatId));
    } catch (err) {
      if (err.code === 'not_member') this.refreshChat(chatId);
    }
  }

  async loadPresence(userId) {
    try {
      this.store.setPresence(await this.api.presence(userId));
    } catch (err) { /* presence is a nicety */ }
  }

  // -- sending ------------------------------------------------------------------------

  /** Unique per user: this device, the time, a counter, and a random part (for other tabs). */
  newClientMsgId() {
    this.counter += 1;
    const device = (this.auth.device_id || 'web').slice(-8);
    const random = crypto.getRandomValues(new Uint32Array(1))[0].toString(36);
    return `w${device}-${Date.now().toString(36)}-${this.counter}-${random}`;
  }

  queue(item) {
    const full = { client_msg_id: this.newClientMsgId(), created: Date.now(), ...item };
    this.socket.send(full);
    this.store.changed('outbox', item.chat);
    return full;
  }

  sendText(chatId, text, replyTo, mentions = []) {
    this.stopTyping();
    return this.queue({
      chat: chatId, kind: 'text', text, reply_to: replyTo || undefined, mentions: mentions.length ? mentions : undefined,
    });
  }

  sendMedia(chatId, media, caption, replyTo, kind) {
    return this.queue({
      chat: chatId, kind: kind || mediaKind(media.mime), media: media.id, media_info: media,
      text: caption || undefined, reply_to: replyTo || undefined,
    });
  }

  /** Send a copy of an entry to each of `chatIds`, marked "forwarded" (media is not uploaded again). */
  forward(entry, chatIds) {
    for (const chatId of chatIds) {
      if (entry.kind === 'text') this.queue({ chat: chatId, kind: 'text', text: entry.text, forwarded: true });
      else if (entry.media) {
        this.queue({
          chat: chatId, kind: entry.kind, media: entry.media.id, media_info: entry.media, text: entry.text || undefined,
          forwarded: true,
        });
      }
    }
  }

  async star(chatId, entry, starred) {
    await this.api.star(chatId, entry.seq, starred);
    this.store.setStarred(chatId, entry.seq, starred);
  }

  async deleteForMe(chatId, seqs) {
    await this.api.deleteForMe(chatId, seqs);
    this.store.hideEntries(chatId, seqs);
  }

  editMessage(chatId, entry, text) {
    return this.queue({ chat: chatId, kind: 'edit', target: entry.id, text });
  }

  deleteMessage(chatId, entry) {
    return this.queue({ chat: chatId, kind: 'delete', target: entry.id });
  }

  retry(clientMsgId) {
    this.socket.retry(clientMsgId);
    this.store.changed('outbox');
  }

  discard(clientMsgId) {
    const item = this.outbox.remove(clientMsgId);
    this.store.changed('outbox', item && item.chat);
  }

  pending(chatId) {
    return this.outbox.forChat(chatId).filter((item) => item.kind !== 'edit' && item.kind !== 'delete');
  }

  markRead(chatId, force = false) {
    const chat = this.store.chats.get(chatId);
    if (!chat || (!force && (document.visibilityState !== 'visible' || this.store.activeChatId !== chatId))) return;
    const seq = chat.last_seq || 0;
    if (seq <= (chat.read_seq || 0) && !chat.unread && !chat.marked_unread) return;
    this.socket.read(chatId, seq); // also clears "marked as unread" on the node
    chat.read_seq = seq;
    chat.unread = 0;
    chat.marked_unread = false;
    this.store.changed('chats', chatId);
  }

  /** The composer changed: tell the chat we are typing (throttled), or that we stopped. */
  typing(chatId, hasText) {
    clearTimeout(this.typingTimer);
    if (!hasText) {
      this.stopTyping();
      return;
    }
    const now = Date.now();
    if (this.typingChat !== chatId || now - this.typingSentAt > TYPING_EVERY) {
      if (this.typingChat && this.typingChat !== chatId) this.stopTyping();
      if (this.socket.typing(chatId, true)) {
        this.typingChat = chatId;
        this.typingSentAt = now;
      }
    }
    this.typingTimer = setTimeout(() => this.stopTyping(), TYPING_IDLE);
  }

  stopTyping() {
    clearTimeout(this.typingTimer);
    if (this.typingChat) this.socket.typing(this.typingChat, false);
    this.typingChat = null;
    this.typingSentAt = 0;
  }

  // -- chats and groups ---------------------------------------------------------------

  async startDirect(userId) {
    const chat = this.store.mergeChat(await this.api.openDirect(userId));
    return chat.id;
  }

  async createGroup(title, memberIds) {
    const chat = this.store.mergeChat(await this.api.createGroup(title, memberIds));
    return chat.id;
  }

  async setTtl(chatId, seconds) {
    this.store.mergeChat(await this.api.updateChat(chatId, { ttl: seconds }));
  }

  async rename(chatId, title) {
    this.store.mergeChat(await this.api.updateChat(chatId, { title }));
  }

  async addMembers(chatId, userIds) {
    this.store.mergeChat(await this.api.addMembers(chatId, userIds));
    await this.loadMembers(chatId);
  }

  async removeMember(chatId, userId) {
    await this.api.removeMember(chatId, userId);
    await this.loadMembers(chatId);
  }

  async setAdmin(chatId, userId, admin) {
    await this.api.setAdmin(chatId, userId, admin);
    await this.loadMembers(chatId);
  }

  async leave(chatId) {
    await this.api.leave(chatId);
    await this.refreshChat(chatId);
  }

  // -- photos ---------------------------------------------------------------------------

  /** Upload a (cropped) picture and make it our profile photo, or the group's (`chatId`). */
  async setPhoto(file, chatId = null, onProgress = null) {
    const media = await this.api.upload(file, onProgress).promise;
    if (chatId) this.store.mergeChat(await this.api.setGroupPhoto(chatId, media.id));
    else this.onOwnUser(await this.api.setMyPhoto(media.id));
  }

  async removePhoto(chatId = null) {
    if (chatId) this.store.mergeChat(await this.api.setGroupPhoto(chatId, null));
    else this.onOwnUser(await this.api.setMyPhoto(null));
  }

  onOwnUser(user) {
    this.store.onUser(user);
    this.dispatchEvent(new CustomEvent('own-user', { detail: user }));
  }

  // -- chat management (our own preferences) ------------------------------------------

  async setPrefs(chatId, changes) {
    this.store.applyPrefs(chatId, await this.api.chatPrefs(chatId, changes));
  }

  async clearChat(chatId) {
    this.store.applyPrefs(chatId, await this.api.clearChat(chatId));
  }

  async deleteChat(chatId) {
    await this.api.deleteChat(chatId);
    const chat = this.store.chats.get(chatId);
    const cleared = chat ? chat.last_seq || 0 : 0;
    this.store.applyPrefs(chatId, { hidden: true, cleared_seq: cleared, pinned: null, archived: false, marked_unread: false });
  }

  async loadBlocked() {
    try {
      this.store.setBlocked(await this.api.blocks());
    } catch (err) { /* asked again when it matters */ }
  }

  async setBlocked(userId, blocked) {
    if (blocked) await this.api.block(userId);
    else await this.api.unblock(userId);
    await this.loadBlocked();
  }

  report(body) {
    return this.api.report(body);
  }

  async logout() {
    this.stopTyping();
    this.stop();
    try {
      await this.api.logout();
    } catch (err) { /* the token is forgotten here either way */ }
    this.outbox.clear();
  }
}

export function mediaKind(mime) {
  if (!mime) return 'file';
  if (mime.startsWith('image/')) return 'image';
  if (mime.startsWith('audio/')) return 'audio';
  if (mime.startsWith('video/')) return 'video';
  return 'file';
}
