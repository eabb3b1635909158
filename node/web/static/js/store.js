// The client's state: chats, the log entries held per chat, members, users, presence,
// typing. It applies server events and says what changed with a `change` event
// (detail: {what, chat}); views read from it and re-render.

export const CONTENT_KINDS = new Set(['text', 'image', 'audio', 'video', 'file']);
const CHANGE_KINDS = new Set(['edit', 'delete']); // applied to their target, never shown
const PREVIEW_KINDS = new Set([...CONTENT_KINDS, 'system', 'deleted']);
const STATUS_RANK = { sent: 1, delivered: 2, read: 3 };

/** The entries of one chat this page holds, by seq (each entry once) and by id. */
class ChatLog {
  constructor() {
    this.bySeq = new Map();
    this.byId = new Map();
    this.oldest = Infinity; // lowest seq held
    this.hasMore = true; // older entries may exist on the node
    this.loaded = false; // the newest history page was fetched
  }

  put(entry) {
    this.bySeq.set(entry.seq, entry);
    if (entry.id) this.byId.set(entry.id, entry);
    if (entry.seq < this.oldest) this.oldest = entry.seq;
  }

  target(change) {
    return (change.target_seq && this.bySeq.get(change.target_seq)) || this.byId.get(change.target) || null;
  }

  sorted() {
    return [...this.bySeq.values()].sort((a, b) => a.seq - b.seq);
  }

  /** Forget every entry up to `seq` (the history was cleared there). */
  dropThrough(seq) {
    for (const [key, entry] of this.bySeq) {
      if (key <= seq) {
        this.bySeq.delete(key);
        if (entry.id) this.byId.delete(entry.id);
      }
    }
    this.oldest = Infinity;
    for (const key of this.bySeq.keys()) if (key < this.oldest) this.oldest = key;
    if (this.oldest === Infinity || this.oldest <= seq + 1) this.hasMore = false;
  }
}

/** Whether a chat is muted now (a timed mute ends by itself). */
export function isMuted(chat, now = Date.now()) {
  return Boolean(chat && chat.muted && (!chat.muted_until || chat.muted_until > now));
}

const PREF_KEYS = ['muted', 'muted_until', 'archived', 'pinned', 'marked_unread', 'cleared_seq'];

export class Store extends EventTarget {
  constructor() {
    super();
    this.reset();
  }

  reset() {
    this.me = null;
    this.settings = {};
    this.limits = {}; // the node's (GET /api/info, then the welcome): max_message_bytes, ...
    this.chats = new Map();
    this.logs = new Map();
    this.members = new Map(); // chat id -> Map(user id -> member)
    this.users = new Map();
    this.presence = new Map();
    this.typing = new Map(); // chat id -> Map(user id -> expiry, ms)
    this.connection = { state: 'idle' };
    this.blocked = new Set(); // ids of the users we blocked
    this.activeChatId = null;
  }

  changed(what, chat = null) {
    this.dispatchEvent(new CustomEvent('change', { detail: { what, chat } }));
  }

  // -- users --------------------------------------------------------------------------

  rememberUser(user) {
    if (user && user.id) this.users.set(user.id, { ...this.users.get(user.id), ...user });
  }

  /** A profile changed (a `user` event): every place that shows the user follows. */
  onUser(user) {
    if (!user || !user.id) return;
    this.rememberUser(user);
    if (this.me && this.me.id === user.id) this.me = { ...this.me, ...user };
    for (const chat of this.chats.values()) {
      if (chat.peer && chat.peer.id === user.id) chat.peer = { ...chat.peer, ...user };
    }
    for (const members of this.members.values()) {
      const member = members.get(user.id);
      if (member && member.user) member.user = { ...member.user, ...user };
    }
    this.changed('users');
  }

  setBlocked(users) {
    this.blocked = new Set(users.map((user) => user.id));
    for (const user of users) this.rememberUser(user);
    this.changed('blocked');
  }

  nameOf(userId) {
    if (this.me && userId === this.me.id) return 'You';
    const user = this.users.get(userId);
    return user ? user.display_name || user.username : 'Someone';
  }

  // -- chats --------------------------------------------------------------------------

  setChats(list) {
    for (const summary of list) this.mergeChat(summary, false);
    this.changed('chats');
  }

  /** A chat summary from the API, merged with what live events already told us. */
  mergeChat(summary, notify = true) {
    if (summary.peer) this.rememberUser(summary.peer);
    const old = this.chats.get(summary.id);
    const merged = { ...old, ...summary };
    if (old) {
      if ((old.last_seq || 0) > (summary.last_seq || 0)) {
        for (const key of ['last_seq', 'last_message', 'updated', 'unread']) merged[key] = old[key];
      }
      for (const key of ['read_seq', 'delivered_seq', 'peer_read_seq', 'peer_delivered_seq']) {
        merged[key] = Math.max(old[key] || 0, summary[key] || 0);
      }
    }
    this.chats.set(summary.id, merged);
    if ((summary.cleared_seq || 0) > ((old && old.cleared_seq) || 0) && this.logs.has(summary.id)) {
      this.logs.get(summary.id).dropThrough(summary.cleared_seq); // cleared on another device meanwhile
      this.changed('messages', summary.id);
    }
    if (notify) this.changed('chats', summary.id);
    return merged;
  }

  /** Pinned chats first (the latest pin on top), then the most recently active. */
  sortedChats() {
    return [...this.chats.values()].sort((a, b) => ((b.pinned || 0) - (a.pinned || 0)) || ((b.updated || 0) - (a.updated || 0)));
  }

  /** Our own preferences for a chat (a `chat_prefs` event, or a summary): what was cleared goes. */
  applyPrefs(chatId, prefs) {
    const chat = this.chats.get(chatId);
    if (!chat) return;
    const cleared = prefs.cleared_seq || 0;
    for (const key of PREF_KEYS) if (key in prefs) chat[key] = prefs[key];
    if (prefs.hidden !== undefined) chat.hidden = prefs.hidden;
    if (cleared) {
      const log = this.logs.get(chatId);
      if (log) log.dropThrough(cleared);
      if (chat.last_message && chat.last_message.seq <= cleared) chat.last_message = null;
      this.changed('messages', chatId);
    }
    this.changed('chats', chatId);
  }

  removeChat(chatId) {
    this.chats.delete(chatId);
    this.logs.delete(chatId);
    this.changed('chats', chatId);
  }

  log(chatId) {
    let log = this.logs.get(chatId);
    if (!log) {
      log = new ChatLog();
      this.logs.set(chatId, log);
    }
    return log;
  }

  // -- log entries --------------------------------------------------------------------

  /** A log entry from the socket (`live`) or a history page; false if already held. */
  applyEntry(chatId, entry, live) {
    const log = this.log(chatId);
    if (log.bySeq.has(entry.seq)) return false;
    log.put(entry);
    if (CHANGE_KINDS.has(entry.kind)) this.applyChange(chatId, log, entry);
    const chat = this.chats.get(chatId);
    if (chat && entry.kind === 'system' && live) { // the summary catches up later; the header now
      if (entry.event === 'ttl_changed') chat.ttl = entry.ttl;
      if (entry.event === 'renamed') chat.title = entry.title;
    }
    if (chat) {
      const mine = this.me && entry.from === this.me.id;
      if (entry.seq > (chat.last_seq || 0)) {
        chat.last_seq = entry.seq;
        if (PREVIEW_KINDS.has(entry.kind)) {
          chat.last_message = entry;
          chat.updated = entry.ts;
        }
        if (live && !mine && CONTENT_KINDS.has(entry.kind) && entry.seq > (chat.read_seq || 0)) {
          chat.unread = (chat.unread || 0) + 1;
        }
      }
      if (mine) {
        chat.read_seq = Math.max(chat.read_seq || 0, entry.seq - 1); // sending reads what came before
        chat.delivered_seq = Math.max(chat.delivered_seq || 0, entry.seq);
      }
      if (live && CONTENT_KINDS.has(entry.kind)) {
        chat.hidden = false; // a new message brings a deleted chat back,
        if (chat.archived && !isMuted(chat)) chat.archived = false; // and an archived one unless muted
      }
    }
    this.changed('messages', chatId);
    if (chat) this.changed('chats', chatId);
    return true;
  }

  /** An edit or a delete: rewrite its target (never with an older edit). */
  applyChange(chatId, log, change) {
    const target = log.target(change);
    if (!target || target.kind === 'deleted') return;
    let updated;
    if (change.kind === 'edit') {
      if ((target.edited || 0) > change.ts) return;
      updated = { ...target, text: change.text, edited: change.ts };
    } else {
      updated = { id: target.id, chat: target.chat, seq: target.seq, from: target.from, ts: target.ts, kind: 'deleted', deleted_by: change.from };
    }
    log.put(updated);
    const chat = this.chats.get(chatId);
    if (chat && chat.last_message && chat.last_message.seq === updated.seq) chat.last_message = updated;
  }

  /** One history page (oldest first); `hasMore` says whether older entries exist, `nextBefore`
   * where the next page starts (the page may be short of entries deleted for us). */
  mergeHistory(chatId, messages, hasMore, newest, nextBefore) {
    const log = this.log(chatId);
    const before = log.oldest;
    if (nextBefore && (!log.cursor || nextBefore < log.cursor)) log.cursor = nextBefore;
    for (const entry of messages) {
      if (!log.bySeq.has(entry.seq)) log.put(entry);
      else {
        const held = log.bySeq.get(entry.seq);
        if (entry.status && (STATUS_RANK[entry.status] || 0) > (STATUS_RANK[held.status] || 0)) held.status = entry.status;
        if (held.kind !== 'deleted') {
          held.reactions = entry.reactions; // the page says what they are now
          held.starred = entry.starred;
        }
      }
    }
    // Edits and deletes held from the socket whose targets just arrived.
    for (const entry of log.sorted()) {
      if (CHANGE_KINDS.has(entry.kind)) this.applyChange(chatId, log, entry);
    }
    if (newest) log.loaded = true;
    if (!messages.length || messages[0].seq <= before || newest) log.hasMore = hasMore;
    if (!messages.length && nextBefore) log.hasMore = hasMore; // all of it deleted for us: go on from there
    this.changed('messages', chatId);
  }

  // -- our own marks: stars, deleted for me -------------------------------------------

  setStarred(chatId, seq, starred) {
    const log = this.logs.get(chatId);
    const entry = log && log.bySeq.get(seq);
    if (!entry) return;
    log.put({ ...entry, starred: starred || undefined });
    this.changed('messages', chatId);
    this.changed('starred', chatId);
  }

  /** Entries deleted for us: gone from this chat's view (and from its preview). */
  hideEntries(chatId, seqs) {
    const log = this.logs.get(chatId);
    const gone = new Set(seqs);
    if (log) {
      for (const seq of gone) {
        const entry = log.bySeq.get(seq);
        if (entry) log.hidden = (log.hidden || new Set()).add(seq);
      }
    }
    const chat = this.chats.get(chatId);
    if (chat && chat.last_message && gone.has(chat.last_message.seq)) {
      const rest = log ? this.visibleEntries(chatId, Date.now()).filter((e) => PREVIEW_KINDS.has(e.kind)) : [];
      chat.last_message = rest.length ? rest[rest.length - 1] : null;
    }
    this.changed('messages', chatId);
    this.changed('chats', chatId);
  }

  // -- reactions ----------------------------------------------------------------------

  /** A `reaction` event: `user` now reacts with `emoji` (null: no longer reacts). */
  applyReaction(event) {
    const log = this.logs.get(event.chat);
    const entry = log && log.bySeq.get(event.seq);
    if (!entry || entry.kind === 'deleted') return null;
    const groups = (entry.reactions || []).map((g) => ({ emoji: g.emoji, users: g.users.filter((u) => u !== event.user) }))
      .filter((g) => g.users.length);
    if (event.emoji) {
      const group = groups.find((g) => g.emoji === event.emoji);
      if (group) group.users.push(event.user);
      else groups.push({ emoji: event.emoji, users: [event.user] });
    }
    groups.sort((a, b) => b.users.length - a.users.length); // stable: the earlier emoji first among equals
    const updated = { ...entry, reactions: groups };
    if (!groups.length) delete updated.reactions;
    log.put(updated);
    this.changed('messages', event.chat);
    return updated;
  }

  /** Reactions of a range of held entries, as the node has them now (after a reconnect). */
  setReactions(chatId, first, last, bySeq) {
    const log = this.logs.get(chatId);
    if (!log) return;
    for (const [seq, entry] of log.bySeq) {
      if (seq < first || seq > last || entry.kind === 'deleted') continue;
      const found = bySeq[String(seq)];
      if (found) log.put({ ...entry, reactions: found });
      else if (entry.reactions) {
        const copy = { ...entry };
        delete copy.reactions;
        log.put(copy);
      }
    }
    log.reactionsStale = false;
    this.changed('messages', chatId);
  }

  /** What a conversation shows: content, system notes and tombstones, not yet expired. */
  visibleEntries(chatId, now) {
    const log = this.logs.get(chatId);
    if (!log) return [];
    return log.sorted().filter((entry) => !CHANGE_KINDS.has(entry.kind) && !(entry.expires_at && entry.expires_at <= now)
      && !(log.hidden && log.hidden.has(entry.seq)));
  }

  /** The next moment an entry of this chat disappears (or null). */
  nextExpiry(chatId, now) {
    const log = this.logs.get(chatId);
    let next = null;
    for (const entry of log ? log.bySeq.values() : []) {
      if (entry.expires_at && entry.expires_at > now && (next === null || entry.expires_at < next)) next = entry.expires_at;
    }
    return next;
  }

  // -- receipts -----------------------------------------------------------------------

  onDelivered(event) {
    const chat = this.chats.get(event.chat);
    if (!chat) return;
    if (event.all) { // a group: every member has everything up to seq
      chat.group_delivered_seq = Math.max(chat.group_delivered_seq || 0, event.seq);
    } else if (chat.kind === 'direct' && event.user !== this.me.id) {
      chat.peer_delivered_seq = Math.max(chat.peer_delivered_seq || 0, event.seq);
    }
    const member = this.members.get(event.chat)?.get(event.user);
    if (member) member.delivered_seq = Math.max(member.delivered_seq || 0, event.seq);
    this.changed('receipts', event.chat);
  }

  onRead(event) {
    const chat = this.chats.get(event.chat);
    if (!chat) return;
    if (event.all) { // a group: every member has read everything up to seq
      chat.group_read_seq = Math.max(chat.group_read_seq || 0, event.seq);
      chat.group_delivered_seq = Math.max(chat.group_delivered_seq || 0, event.seq);
      this.changed('receipts', event.chat);
      return;
    }
    if (event.user === this.me.id) {
      chat.read_seq = Math.max(chat.read_seq || 0, event.seq);
      if (chat.read_seq >= (chat.last_seq || 0)) chat.unread = 0;
      this.changed('chats', event.chat);
      return;
    }
    if (chat.kind === 'direct') {
      chat.peer_read_seq = Math.max(chat.peer_read_seq || 0, event.seq);
      chat.peer_delivered_seq = Math.max(chat.peer_delivered_seq || 0, event.seq);
    }
    const member = this.members.get(event.chat)?.get(event.user);
    if (member) {
      member.read_seq = Math.max(member.read_seq || 0, event.seq);
      member.delivered_seq = Math.max(member.delivered_seq || 0, event.seq);
    }
    this.changed('receipts', event.chat);
  }

  /** sent, delivered or read, for one of our own messages. */
  statusOf(chat, entry) {
    const seq = entry.seq;
    let status = 'sent';
    const shareReads = this.settings.read_receipts !== false;
    if (chat.kind === 'direct') {
      if (shareReads && (chat.peer_read_seq || 0) >= seq) status = 'read';
      else if ((chat.peer_delivered_seq || 0) >= seq) status = 'delivered';
    } else {
      // Groups: the watermarks from `delivered`/`read` events with "all", or the members' cursors.
      const members = this.members.get(chat.id);
      const others = members ? [...members.values()].filter((m) => m.user.id !== this.me.id) : [];
      const all = (field) => others.length > 0 && others.every((m) => (m[field] || 0) >= seq);
      if ((chat.group_read_seq || 0) >= seq || all('read_seq')) status = 'read';
      else if ((chat.group_delivered_seq || 0) >= seq || all('delivered_seq')) status = 'delivered';
    }
    const known = entry.status === 'pending' ? 'sent' : entry.status;
    return (STATUS_RANK[known] || 0) > STATUS_RANK[status] ? known : status;
  }

  setMembers(chatId, list) {
    const members = new Map();
    for (const member of list) {
      this.rememberUser(member.user);
      members.set(member.user.id, { ...member });
    }
    this.members.set(chatId, members);
    this.changed('members', chatId);
  }

  // -- presence and typing ------------------------------------------------------------

  setPresence(presence) {
    this.presence.set(presence.user, presence);
    this.changed('presence', null);
  }

  onTyping(event) {
    let typers = this.typing.get(event.chat);
    if (!typers) this.typing.set(event.chat, (typers = new Map()));
    if (event.typing) typers.set(event.user, Date.now() + (event.expires_in || 6000));
    else typers.delete(event.user);
    this.changed('typing', event.chat);
    if (event.typing) setTimeout(() => this.changed('typing', event.chat), (event.expires_in || 6000) + 50);
  }

  stopTyping(chatId, userId) {
    const typers = this.typing.get(chatId);
    if (typers && typers.delete(userId)) this.changed('typing', chatId);
  }

  typers(chatId) {
    const typers = this.typing.get(chatId);
    const now = Date.now();
    return typers ? [...typers].filter(([, until]) => until > now).map(([user]) => user) : [];
  }

  totalUnread() {
    let total = 0;
    for (const chat of this.chats.values()) total += chat.unread || 0;
    return total;
  }
}
