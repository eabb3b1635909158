// The open chat: header (title, presence, typing), the messages with day separators, an
// unread divider and a "jump to the latest" button, and the composer (text with a length
// counter near the limit, emoji, replies, edits, voice messages, attachments by picker,
// drag-and-drop or paste).

import { $, h, reconcile } from '../dom.js';
import { errorText, uploadFailure, uploadProblem } from '../errors.js';
import { dayKey, dayLabel, lastSeen, ttlLabel } from '../format.js';
import { mediaKind } from '../session.js';
import { CONTENT_KINDS } from '../store.js';
import { tick } from './chatlist.js';
import { chatMenuItems } from './chatactions.js';
import { EmojiPicker } from './emoji.js';
import { MentionPicker } from './mentions.js';
import { closeMenu, openMenu } from './menu.js';
import { MoreReactions, myReaction, reactionBar, ReactionsDialog } from './reactions.js';
import { messageNode } from './message.js';
import { VoiceRecorder } from './recorder.js';
import { avatar, chatAvatarId, chatPhoto, chatTitle, entryText } from './text.js';
import { PhotoViewer } from './viewer.js';

const NEAR_BOTTOM = 80; // px: closer than this to the end counts as "reading the newest"
const JUMP_AFTER = 300; // px from the end beyond which "jump to the latest" shows
const DEFAULT_MAX_BYTES = 16384; // limits.max_message_bytes until the node says
const encoder = new TextEncoder();

/** UTF-8 bytes of a text (the node's limit is in bytes). */
export function byteLength(text) {
  return encoder.encode(text).length;
}

/** How many characters must go from the end of `text` for it to fit in `limit` bytes. */
function charactersOver(text, limit) {
  let bytes = byteLength(text);
  const chars = [...text];
  let count = 0;
  while (bytes > limit && count < chars.length) {
    count += 1;
    bytes -= byteLength(chars[chars.length - count]);
  }
  return count;
}

export class ConversationView {
  constructor(store, session, dialogs, { onBack, toast, actionsContext, onSearchIn }) {
    this.store = store;
    this.session = session;
    this.dialogs = dialogs;
    this.onBack = onBack;
    this.toast = toast;
    this.actionsContext = actionsContext;
    this.onSearchIn = onSearchIn; // (chat id): search that chat's messages
    this.chatId = null;
    this.rows = new Map(); // row key -> {sig, node}
    this.drafts = new Map(); // chat id -> unsent text
    this.context = null; // {type: 'reply' | 'edit', entry}
    this.uploads = [];
    this.stickToBottom = true;
    this.jumping = false; // a smooth scroll to the end is under way (jumpToLatest): still "at the end"
    this.expiryTimer = null;
    this.unread = null; // {after, upTo: read and last seq when the chat was opened, placed: scrolled to it yet}
    this.seenUpTo = 0; // newest seq shown while at the bottom (newer ones count on the jump button)
    this.blocked = null; // ids this user blocked, asked for when a send fails with `blocked`
    this.blockedFor = null;

    this.scroller = $('#messages');
    this.list = $('#message-list');
    this.text = $('#compose-text');
    this.form = $('#compose-form');

    this.form.addEventListener('submit', (e) => {
      e.preventDefault();
      this.submit();
    });
    this.text.addEventListener('keydown', (e) => this.onComposerKey(e));
    this.text.addEventListener('input', () => this.onInput());
    this.text.addEventListener('paste', (e) => this.onPaste(e));
    this.emoji = new EmojiPicker(this.text, () => this.onInput());
    this.mentions = new MentionPicker(this.text, () => {
      const chat = this.store.chats.get(this.chatId);
      const members = chat && chat.kind === 'group' && chat.left_seq === undefined ? this.store.members.get(chat.id) : null;
      return members ? [...members.values()] : null;
    }, () => this.store.me.id, () => this.onInput());
    this.recorder = new VoiceRecorder({
      onRecorded: (file) => this.sendVoice(file),
      onError: (text) => this.showComposeError(text),
    });
    this.viewer = new PhotoViewer(store, session.api);
    this.reactionsDialog = new ReactionsDialog(store);
    this.moreReactions = new MoreReactions();
    $('#jump-latest').addEventListener('click', () => this.jumpToLatest());
    $('#compose-context-cancel').addEventListener('click', () => this.setContext(null));
    $('#back').addEventListener('click', () => this.onBack());
    $('#chat-info').addEventListener('click', () => this.dialogs.chatInfo(this.chatId));
    $('#chat-title-button').addEventListener('click', () => this.dialogs.chatInfo(this.chatId));
    $('#chat-menu').addEventListener('click', (e) => this.openChatMenu(e.currentTarget));
    $('#attach').addEventListener('click', () => $('#file-input').click());
    $('#file-input').addEventListener('change', (e) => {
      const files = [...e.target.files];
      e.target.value = '';
      if (files.length) this.pickFiles(files);
    });
    this.scroller.addEventListener('scroll', () => this.onScroll());
    for (const type of ['wheel', 'touchstart', 'keydown', 'pointerdown']) {
      this.scroller.addEventListener(type, () => { this.jumping = false; }, { passive: true }); // the reader takes over
    }
    this.scroller.addEventListener('keydown', (e) => this.onListKey(e));
    this.setupDrop();

    store.addEventListener('change', (e) => this.onChange(e.detail));
  }

  onChange({ what, chat }) {
    if (!this.chatId) return;
    if (what === 'messages' && chat === this.chatId && this.reactionsDialog.entry) {
      const held = this.store.log(chat).bySeq.get(this.reactionsDialog.entry.seq);
      if (held) this.reactionsDialog.update(held);
    }
    if (what === 'active') return;
    if (chat && chat !== this.chatId && what !== 'presence' && what !== 'users') return;
    this.schedule();
  }

  schedule() {
    if (this.pending) return;
    this.pending = true;
    requestAnimationFrame(() => {
      this.pending = false;
      this.render();
    });
  }

  /** The header's menu: the chat's info, then what chat actions apply, and closing it. */
  openChatMenu(anchor) {
    const chat = this.store.chats.get(this.chatId);
    if (!chat) return;
    const info = { label: chat.kind === 'group' ? 'Group info' : 'Contact info', icon: 'info', onSelect: () => this.dialogs.chatInfo(chat.id) };
    const search = { label: 'Search messages', icon: 'search', onSelect: () => this.onSearchIn(chat.id) };
    const items = chatMenuItems(this.actionsContext, chat, [info, search, '-']);
    items.push('-', { label: 'Close chat', icon: 'close', onSelect: () => this.onBack() });
    openMenu({ items, at: anchor, label: 'Chat options' });
  }

  // -- opening and closing ------------------------------------------------------------

  open(chatId) {
    if (this.chatId && this.chatId !== chatId) this.drafts.set(this.chatId, this.text.value);
    const switched = this.chatId !== chatId;
    this.chatId = chatId;
    $('#no-chat').hidden = true;
    $('#chat-view').hidden = false;
    document.body.classList.add('chat-open');
    if (switched) {
      this.rows.clear();
      this.list.replaceChildren();
      this.context = null;
      this.mentions.reset();
      this.text.value = this.drafts.get(chatId) || '';
      this.autosize();
      this.stickToBottom = true;
      this.jumping = false;
      this.seenUpTo = 0;
      this.emoji.close(false);
      if (this.recorder.active) this.recorder.cancel();
      this.showComposeError('');
      const chat = this.store.chats.get(chatId);
      this.unread = chat && chat.unread ? { after: chat.read_seq || 0, upTo: chat.last_seq || 0, placed: false } : null;
      this.updateComposer();
    }
    this.render();
    this.text.focus({ preventScroll: true });
  }

  close() {
    if (this.chatId) this.drafts.set(this.chatId, this.text.value);
    if (this.recorder.active) this.recorder.cancel();
    this.emoji.close(false);
    if (this.viewer.dialog.open) this.viewer.dialog.close();
    this.chatId = null;
    clearTimeout(this.expiryTimer);
    this.rows.clear();
    this.list.replaceChildren();
    $('#chat-view').hidden = true;
    $('#no-chat').hidden = false;
    document.body.classList.remove('chat-open');
  }

  /** Forget everything of the session that ended (drafts, uploads). */
  reset() {
    this.close();
    this.drafts.clear();
    for (const item of this.uploads) if (item.abort) item.abort();
    this.uploads = [];
    this.context = null;
    this.text.value = '';
  }

  // -- rendering ----------------------------------------------------------------------

  render() {
    const chat = this.store.chats.get(this.chatId);
    if (!chat) return;
    this.renderHeader(chat);
    this.renderMessages(chat);
    this.renderComposer(chat);
    this.renderUploads();
  }

  renderHeader(chat) {
    const title = chatTitle(chat);
    $('#chat-title').textContent = title;
    avatar(title, chatAvatarId(chat), $('#chat-avatar'), chatPhoto(chat));
    const subtitle = $('#chat-subtitle');
    const typers = this.store.typers(chat.id);
    let text = '';
    let cls = 'subtitle';
    if (typers.length) {
      cls += ' typing';
      if (chat.kind === 'direct') text = 'typing…';
      else if (typers.length === 1) text = `${this.store.nameOf(typers[0])} is typing…`;
      else text = `${typers.map((id) => this.store.nameOf(id)).join(', ')} are typing…`;
    } else if (this.store.connection.state !== 'online') {
      text = ''; // what we knew of others may be out of date
    } else if (chat.kind === 'direct' && chat.peer) {
      const presence = this.store.presence.get(chat.peer.id);
      if (presence && presence.online) {
        text = 'online';
        cls += ' online';
      } else if (presence && presence.last_seen) {
        text = lastSeen(presence.last_seen);
      }
    } else if (chat.kind === 'group') {
      const members = this.store.members.get(chat.id);
      text = members
        ? [...members.values()].map((m) => this.store.nameOf(m.user.id)).sort((a, b) => (a === 'You') - (b === 'You')).join(', ')
        : `${chat.members || ''} members`;
    }
    subtitle.textContent = text;
    subtitle.className = cls;
    const ttl = $('#chat-ttl');
    ttl.hidden = !chat.ttl;
    ttl.textContent = chat.ttl ? ttlLabel(chat.ttl) : '';
    ttl.title = chat.ttl ? `Disappearing messages: ${ttlLabel(chat.ttl)}` : '';
  }

  renderMessages(chat) {
    const store = this.store;
    const now = this.session.socket.now();
    const log = store.log(chat.id);
    const entries = store.visibleEntries(chat.id, now);
    const views = [];
    let previous = null;
    for (const entry of entries) {
      const status = entry.from === store.me.id && entry.kind !== 'system' ? store.statusOf(chat, entry) : null;
      const showSender = !previous || previous.from !== entry.from || previous.kind === 'system' || dayKey(previous.ts) !== dayKey(entry.ts);
      views.push({ key: `e${entry.seq}`, entry, status, showSender });
      previous = entry;
    }
    for (const item of this.session.pending(chat.id)) {
      const entry = {
        from: store.me.id, ts: item.created, kind: item.kind, text: item.text, reply_to: item.reply_to, media: item.media_info,
      };
      views.push({ key: `p${item.client_msg_id}`, entry, status: item.state === 'failed' ? 'failed' : 'pending', pending: item, showSender: false });
    }

    const youBlocked = this.youBlocked(chat);
    const ctx = { store, api: this.session.api, chat, readOnly: chat.left_seq !== undefined, youBlocked, actions: this.actions() };
    const nodes = [];
    let day = null;
    const unread = this.unreadStart(chat, log, entries);
    for (const view of views) {
      const key = dayKey(view.entry.ts);
      if (key !== day) {
        day = key;
        nodes.push(this.row(`d${key}`, dayLabel(view.entry.ts), () => h('div', { class: 'row day' },
          h('span', { class: 'day-label' }, dayLabel(view.entry.ts)))));
      }
      if (unread && view.entry === unread.entry) {
        const label = `${unread.count} unread message${unread.count === 1 ? '' : 's'}`;
        nodes.push(this.row('unread', label, () => h('div', { class: 'row unread-divider', role: 'separator', 'aria-label': label },
          h('span', null, label))));
      }
      const sig = JSON.stringify([view.entry.kind, view.entry.text, view.entry.edited, view.showSender,
        view.pending && view.pending.state, view.pending && view.pending.code, view.pending && youBlocked,
        view.entry.media && view.entry.media.id, chat.role, ctx.readOnly,
        view.entry.reply_to && this.replySig(chat.id, view.entry), view.entry.from && store.nameOf(view.entry.from),
        view.entry.kind === 'system' && entryText(store, view.entry), view.entry.reactions, view.entry.starred,
        view.entry.mentions && view.entry.mentions.map((id) => store.nameOf(id))]);
      const node = this.row(view.key, sig, () => messageNode(ctx, view));
      if (view.status) updateTick(node, view.status);
      nodes.push(node);
    }
    const keep = new Set(nodes);
    for (const [key, row] of this.rows) if (!keep.has(row.node)) this.rows.delete(key);

    // Keep what the reader looks at in place when older entries come in above it.
    const scroller = this.scroller;
    const anchor = this.stickToBottom ? null : this.list.querySelector('.msg[data-seq], .system');
    const anchorTop = anchor ? anchor.offsetTop : 0;
    reconcile(this.list, nodes);
    if (this.stickToBottom) scroller.scrollTop = scroller.scrollHeight;
    else if (anchor && anchor.isConnected && anchor.offsetTop !== anchorTop) {
      scroller.scrollTop += anchor.offsetTop - anchorTop; // (only then: setting it stops a smooth scroll)
    }
    if (this.unread && !this.unread.placed && log.loaded) { // once, as the chat opens
      this.unread.placed = true;
      if (unread) this.placeUnread();
    }
    if (this.stickToBottom && entries.length) this.seenUpTo = Math.max(this.seenUpTo, entries[entries.length - 1].seq);
    this.renderJump(entries);
    const status = $('#history-status');
    status.textContent = !log.loaded || log.loading ? 'Loading messages…'
      : log.hasMore ? '' : (entries.length ? 'This is the start of the chat.' : 'No messages yet. Say hello!');
    if (log.loaded && log.hasMore && !log.loading && scroller.scrollTop < 200) this.session.loadHistory(chat.id);

    clearTimeout(this.expiryTimer);
    const next = store.nextExpiry(chat.id, now);
    if (next) this.expiryTimer = setTimeout(() => this.schedule(), Math.min(next - now + 50, 2 ** 31 - 1));
  }

  row(key, sig, build) {
    const held = this.rows.get(key);
    if (held && held.sig === sig) return held.node;
    const node = build();
    if (held && held.node.contains(document.activeElement)) {
      queueMicrotask(() => node.querySelector('.bubble')?.focus());
    }
    if (held) held.node.replaceWith(node);
    this.rows.set(key, { sig, node });
    return node;
  }

  replySig(chatId, entry) {
    const log = this.store.log(chatId);
    const target = (entry.reply_to_seq && log.bySeq.get(entry.reply_to_seq)) || log.byId.get(entry.reply_to);
    return target ? `${target.kind}:${target.text || ''}` : '';
  }

  /** Where the unread divider goes: before the first message from others the user had not
   * read when opening the chat, if it is loaded (with what came just before it). */
  unreadStart(chat, log, entries) {
    if (!this.unread) return null;
    const after = this.unread.after;
    if (log.hasMore && !(log.oldest <= after)) return null; // the first unread may not be loaded
    const { upTo } = this.unread; // what came while the chat is open is not counted
    const fresh = entries.filter((e) => e.seq > after && e.seq <= upTo && e.from !== this.store.me.id && CONTENT_KINDS.has(e.kind));
    return fresh.length ? { entry: fresh[0], count: fresh.length } : null;
  }

  /** Scroll the unread divider to the top (below the date), unless all unread fit below it. */
  placeUnread() {
    const divider = this.list.querySelector('.unread-divider');
    if (!divider) return;
    const scroller = this.scroller;
    const band = this.list.querySelector('.row.day');
    const top = divider.offsetTop - (band ? band.offsetHeight : 0) - 8;
    if (scroller.scrollHeight - top > scroller.clientHeight) {
      scroller.scrollTop = top;
      this.stickToBottom = false;
    }
  }

  renderJump(entries) {
    const s = this.scroller;
    const away = s.scrollHeight - s.scrollTop - s.clientHeight > JUMP_AFTER;
    const button = $('#jump-latest');
    button.hidden = !away;
    const fresh = entries.filter((e) => e.seq > this.seenUpTo && e.from !== this.store.me.id && CONTENT_KINDS.has(e.kind)).length;
    const count = $('#jump-count');
    count.hidden = !away || !fresh || !this.seenUpTo;
    count.textContent = String(fresh);
    button.setAttribute('aria-label', !count.hidden ? `Jump to the latest message (${fresh} new)` : 'Jump to the latest message');
  }

  jumpToLatest() {
    this.stickToBottom = true;
    this.jumping = true; // until the end is reached: a render meanwhile goes straight there
    const reduce = window.matchMedia('(prefers-reduced-motion: reduce)').matches;
    this.scroller.scrollTo({ top: this.scroller.scrollHeight, behavior: reduce ? 'auto' : 'smooth' });
    this.text.focus({ preventScroll: true });
  }

  /** Whether the user blocked the other person of a 1-1 chat (asked once a send fails with `blocked`). */
  youBlocked(chat) {
    if (chat.kind !== 'direct' || !chat.peer) return false;
    const failed = this.session.pending(chat.id).some((item) => item.state === 'failed' && item.code === 'blocked');
    if (!failed) return false;
    if (this.blockedFor !== chat.id) {
      this.blockedFor = chat.id;
      this.session.api.blocks().then((users) => {
        this.blocked = new Set(users.map((user) => user.id));
        this.schedule();
      }).catch(() => {});
    }
    return Boolean(this.blocked && this.blocked.has(chat.peer.id));
  }

  renderComposer(chat) {
    const left = chat.left_seq !== undefined;
    $('#compose-form').hidden = left;
    $('#compose-disabled').hidden = !left;
    const box = $('#compose-context');
    if (!this.context || left) {
      box.hidden = true;
      return;
    }
    box.hidden = false;
    const { type, entry } = this.context;
    $('#compose-context-title').textContent = type === 'edit' ? 'Edit message' : `Reply to ${this.store.nameOf(entry.from)}`;
    $('#compose-context-text').textContent = entryText(this.store, entry);
  }

  // -- composing ----------------------------------------------------------------------

  autosize() {
    this.text.style.height = 'auto';
    this.text.style.height = `${Math.min(this.text.scrollHeight, 160)}px`;
  }

  onInput() {
    this.autosize();
    this.updateComposer();
    this.mentions.update();
    if (this.composeError && this.composeError !== 'length') this.showComposeError('');
    if (this.chatId && !(this.context && this.context.type === 'edit')) this.session.typing(this.chatId, this.text.value.trim() !== '');
  }

  limit() {
    return this.store.limits.max_message_bytes || DEFAULT_MAX_BYTES;
  }

  /** The counter near the length limit, the sentence past it, and send or record. */
  updateComposer() {
    const text = this.text.value.trim();
    const limit = this.limit();
    const bytes = byteLength(text);
    const left = limit - bytes;
    const counter = $('#compose-counter');
    counter.hidden = left > Math.max(100, Math.floor(limit * 0.06));
    counter.classList.toggle('over', left < 0);
    if (left < 0) {
      const over = charactersOver(text, limit);
      counter.textContent = `${over} too many`;
      this.showComposeError(`This message is too long to send. Remove ${over} character${over === 1 ? '' : 's'}, or send it in parts.`, 'length');
    } else {
      counter.textContent = `${left} left`;
      if (this.composeError === 'length') this.showComposeError('');
    }
    $('#send').setAttribute('aria-disabled', String(left < 0));
    this.form.classList.toggle('has-text', text !== '' || Boolean(this.context && this.context.type === 'edit'));
  }

  /** A sentence above the composer ('' hides it); `kind` 'length' stays until the text fits. */
  showComposeError(text, kind = 'other') {
    const el = $('#compose-error');
    el.hidden = !text;
    el.textContent = text;
    this.composeError = text ? kind : null;
  }

  onComposerKey(e) {
    if (!e.isComposing && this.mentions.onKey(e)) return;
    if (e.key === 'Enter' && !e.shiftKey && !e.isComposing) {
      e.preventDefault();
      this.submit();
    } else if (e.key === 'Escape' && this.context) {
      e.preventDefault();
      this.setContext(null);
    } else if (e.key === 'ArrowUp' && !this.text.value && !this.context) {
      const last = this.lastOwnText();
      if (last) {
        e.preventDefault();
        this.setContext({ type: 'edit', entry: last });
      }
    }
  }

  lastOwnText() {
    if (this.session.pending(this.chatId).length) return null; // the newest is not stored yet
    const entries = this.store.visibleEntries(this.chatId, this.session.socket.now());
    for (let i = entries.length - 1; i >= 0; i--) {
      const entry = entries[i];
      if (entry.from === this.store.me.id && entry.kind === 'text') return entry;
    }
    return null;
  }

  setContext(context) {
    const wasEdit = this.context && this.context.type === 'edit';
    this.context = context;
    if (context && context.type === 'edit') this.text.value = context.entry.text || '';
    else if (wasEdit) this.text.value = '';
    this.autosize();
    this.updateComposer();
    this.schedule();
    this.text.focus();
  }

  submit() {
    const text = this.text.value.trim();
    if (!this.chatId || !text) return;
    if (byteLength(text) > this.limit()) {
      this.updateComposer(); // says how much is too much; nothing goes out
      return;
    }
    const chatId = this.chatId;
    if (this.context && this.context.type === 'edit') {
      if (text !== this.context.entry.text) this.session.editMessage(chatId, this.context.entry, text);
    } else {
      const reply = this.context && this.context.type === 'reply' ? this.context.entry.id : null;
      this.session.sendText(chatId, text, reply, this.mentions.mentionsIn(text));
    }
    this.mentions.reset();
    this.text.value = '';
    this.drafts.delete(chatId);
    this.context = null;
    this.unread = null; // answering: what came before is read
    this.stickToBottom = true;
    this.autosize();
    this.updateComposer();
    this.schedule();
  }

  actions() {
    return {
      reply: (entry) => this.setContext({ type: 'reply', entry }),
      react: (entry, anchor) => this.openReactionBar(entry, anchor),
      menu: (entry, at) => this.openMessageMenu(entry, at),
      showReactions: (entry, emoji) => this.reactionsDialog.open(entry, emoji, () => this.react(entry, null)),
      openImage: (entry) => this.viewer.open(this.chatId, entry),
      jumpTo: (seq) => this.jumpTo(seq),
      retry: (item) => this.session.retry(item.client_msg_id),
      discard: (item) => this.session.discard(item.client_msg_id),
      editFailed: (item) => {
        this.session.discard(item.client_msg_id);
        this.setContext(null);
        this.text.value = item.text || '';
        this.onInput();
      },
      unblockAndRetry: async (item) => {
        const chat = this.store.chats.get(item.chat);
        try {
          await this.session.api.unblock(chat.peer.id);
        } catch (err) {
          this.toast(errorText(err));
          return;
        }
        if (this.blocked) this.blocked.delete(chat.peer.id);
        for (const other of this.session.pending(item.chat)) {
          if (other.state === 'failed' && other.code === 'blocked') this.session.retry(other.client_msg_id);
        }
      },
    };
  }

  /**
   * A message's menu (right-click, long press, Enter or the menu key on a focused message,
   * or its "More actions" button): the quick reactions, then what can be done with it.
   */
  openMessageMenu(entry, at) {
    const chat = this.store.chats.get(this.chatId);
    if (!chat || entry.kind === 'system') return;
    const own = entry.from === this.store.me.id;
    const deleted = entry.kind === 'deleted';
    const active = chat.left_seq === undefined;
    const admin = chat.kind === 'group' && chat.role === 'admin';
    const chatId = this.chatId;
    const editable = own && active && !deleted && (entry.kind === 'text' || entry.text);
    const items = deleted ? [] : [
      active ? { label: 'Reply', icon: 'reply', onSelect: () => this.setContext({ type: 'reply', entry }) } : null,
      entry.text ? { label: 'Copy', icon: 'copy', onSelect: () => this.copy(entry) } : null,
      { label: 'Forward', icon: 'forward', onSelect: () => this.forward(entry) },
      { label: entry.starred ? 'Unstar' : 'Star', icon: 'star', onSelect: () => this.star(entry, !entry.starred) },
      editable ? { label: 'Edit', icon: 'edit', onSelect: () => this.setContext({ type: 'edit', entry }) } : null,
      own ? { label: 'Message info', icon: 'info', onSelect: () => this.dialogs.receipts(chatId, entry) } : null,
    ];
    items.push('-', { label: 'Delete for me', icon: 'trash', onSelect: () => this.deleteForMe(entry) });
    if (!deleted && active && (own || admin)) {
      items.push({
        label: 'Delete for everyone', icon: 'trash', danger: true,
        onSelect: async () => {
          if (await this.dialogs.confirm('Delete this message for everyone?', 'Delete')) this.session.deleteMessage(chatId, entry);
        },
      });
    }
    const header = deleted || !active ? null : this.reactionBarFor(entry);
    openMenu({ items, at, label: 'Message actions', header, findAgain: this.bubbleAgain(entry) });
  }

  /** For a menu opened from within a message: its new bubble, should a reaction or an edit
   * redraw the message while the menu is open (see openMenu's `findAgain`). */
  bubbleAgain(entry) {
    const opener = document.activeElement;
    if (!opener || !opener.closest(`#message-list [data-seq="${entry.seq}"]`)) return null;
    return () => this.list.querySelector(`[data-seq="${entry.seq}"] .bubble`);
  }

  async copy(entry) {
    try {
      await navigator.clipboard.writeText(entry.text || '');
      this.toast('Message copied.');
    } catch (err) {
      this.toast('The browser didn’t allow copying. Select the text and copy it instead.');
    }
  }

  async forward(entry) {
    const chatIds = await this.dialogs.forward(entry);
    if (!chatIds || !chatIds.length) return;
    this.session.forward(entry, chatIds);
    this.toast(chatIds.length === 1 ? `Forwarded to ${chatTitle(this.store.chats.get(chatIds[0]))}.`
      : `Forwarded to ${chatIds.length} chats.`);
  }

  async star(entry, starred) {
    try {
      await this.session.star(this.chatId, entry, starred);
    } catch (err) {
      this.toast(errorText(err, 'react'));
    }
  }

  async deleteForMe(entry) {
    if (!(await this.dialogs.confirm('Delete this message for you? Others still see it.', 'Delete for me'))) return;
    try {
      await this.session.deleteForMe(this.chatId, [entry.seq]);
    } catch (err) {
      this.toast(errorText(err, 'delete'));
    }
  }

  /** The quick reactions over a message (a React button, or the message's menu). */
  openReactionBar(entry, anchor) {
    openMenu({ items: [], at: anchor, label: 'React', header: this.reactionBarFor(entry), findAgain: this.bubbleAgain(entry) });
  }

  reactionBarFor(entry) {
    const current = myReaction(entry, this.store.me.id);
    return reactionBar({
      current,
      onPick: (emoji) => {
        closeMenu(true);
        this.react(entry, emoji === current ? null : emoji); // the same one again takes it back
      },
      onMore: async () => {
        closeMenu(false);
        const emoji = await this.moreReactions.pick();
        if (emoji) this.react(entry, emoji);
      },
    });
  }

  async react(entry, emoji) {
    const chatId = this.chatId;
    try {
      await this.session.react(chatId, entry, emoji);
    } catch (err) {
      this.toast(errorText(err, 'react'));
    }
  }

  /** Show a message of the open chat in its context, loading older pages until it is held. */
  async reveal(seq) {
    const chatId = this.chatId;
    const held = await this.session.loadUntil(chatId, seq);
    if (chatId !== this.chatId) return;
    if (!held) {
      this.toast('That message is no longer in this chat.');
      return;
    }
    this.stickToBottom = false;
    this.render();
    this.jumpTo(seq, false);
  }

  jumpTo(seq, load = true) {
    const row = seq && this.list.querySelector(`[data-seq="${seq}"]`);
    if (!row) {
      if (load && seq) this.reveal(seq);
      else this.toast('That message is no longer in this chat.');
      return;
    }
    // At once when it was just loaded: a smooth scroll starting at the end would count as
    // reading the newest, and the next render would go back there.
    row.scrollIntoView({ block: 'center', behavior: load ? 'smooth' : 'auto' });
    if (!load) this.stickToBottom = false;
    row.classList.add('flash');
    setTimeout(() => row.classList.remove('flash'), 1500);
    row.querySelector('.bubble').focus({ preventScroll: true });
  }

  // -- scrolling and keyboard in the list ---------------------------------------------

  onScroll() {
    const s = this.scroller;
    const near = s.scrollHeight - s.scrollTop - s.clientHeight < NEAR_BOTTOM;
    if (near) this.jumping = false;
    this.stickToBottom = near || this.jumping;
    if (this.chatId) {
      const entries = this.store.visibleEntries(this.chatId, this.session.socket.now());
      if (this.stickToBottom && entries.length) this.seenUpTo = Math.max(this.seenUpTo, entries[entries.length - 1].seq);
      this.renderJump(entries);
    }
    if (s.scrollTop < 200 && this.chatId) {
      const log = this.store.log(this.chatId);
      if (log.loaded && log.hasMore) this.session.loadHistory(this.chatId);
    }
  }

  onListKey(e) {
    const bubbles = [...this.list.querySelectorAll('.bubble')];
    if (!bubbles.length) return;
    const current = bubbles.indexOf(document.activeElement.closest && document.activeElement.closest('.bubble'));
    if (e.key === 'ArrowUp' || e.key === 'ArrowDown') {
      e.preventDefault();
      const next = current === -1 ? bubbles.length - 1 : Math.max(0, Math.min(bubbles.length - 1, current + (e.key === 'ArrowUp' ? -1 : 1)));
      bubbles[next].focus();
    } else if (e.key === 'Escape') {
      this.text.focus();
    }
  }

  // -- attachments --------------------------------------------------------------------

  setupDrop() {
    const area = $('#conversation');
    const zone = $('#drop-zone');
    let depth = 0;
    const hasFiles = (e) => e.dataTransfer && [...e.dataTransfer.types].includes('Files');
    area.addEventListener('dragenter', (e) => {
      if (!this.chatId || !hasFiles(e)) return;
      e.preventDefault();
      depth += 1;
      zone.hidden = false;
    });
    area.addEventListener('dragover', (e) => {
      if (!this.chatId || !hasFiles(e)) return;
      e.preventDefault();
      e.dataTransfer.dropEffect = 'copy';
    });
    area.addEventListener('dragleave', () => {
      depth = Math.max(0, depth - 1);
      if (!depth) zone.hidden = true;
    });
    area.addEventListener('drop', (e) => {
      depth = 0;
      zone.hidden = true;
      if (!this.chatId || !hasFiles(e)) return;
      e.preventDefault();
      const files = [...e.dataTransfer.files];
      if (files.length) this.pickFiles(files);
    });
  }

  /** Files pasted into the composer (a screenshot, an image copied from a page) are attached. */
  onPaste(e) {
    const files = [...(e.clipboardData ? e.clipboardData.files : [])];
    if (!files.length || !this.chatId) return; // text pastes as text
    e.preventDefault();
    const stamp = new Date().toISOString().slice(0, 19).replace(/[-:]/g, '').replace('T', '-');
    this.pickFiles(files.map((file) => (/^image\.\w+$/.test(file.name) || !file.name
      ? new File([file], `pasted-${stamp}.${(file.type.split('/')[1] || 'png').replace('jpeg', 'jpg')}`, { type: file.type })
      : file)));
  }

  sendVoice(file) {
    if (!this.chatId) return;
    const reply = this.context && this.context.type === 'reply' ? this.context.entry.id : null;
    if (reply) this.setContext(null);
    this.stickToBottom = true;
    this.upload(this.chatId, file, '', reply);
  }

  async pickFiles(picked) {
    const chatId = this.chatId;
    const problems = picked.map(uploadProblem).filter(Boolean);
    const files = picked.filter((file) => !uploadProblem(file));
    this.showComposeError(problems.join(' '));
    if (!files.length) return;
    const caption = await this.dialogs.attach(files);
    if (caption === null) return;
    const reply = this.context && this.context.type === 'reply' ? this.context.entry.id : null;
    if (reply) this.setContext(null);
    files.forEach((file, i) => this.upload(chatId, file, i === 0 ? caption : '', i === 0 ? reply : null));
  }

  upload(chatId, file, caption, replyTo) {
    if (chatId === this.chatId) this.unread = null; // answering: what came before is read
    const item = { key: `${Date.now()}-${Math.random()}`, chatId, file, caption, replyTo, loaded: 0, total: file.size, state: 'uploading', error: null };
    const { promise, abort } = this.session.api.upload(file, (loaded, total) => {
      item.loaded = loaded;
      item.total = total;
      this.renderUploads();
    });
    item.abort = abort;
    this.uploads.push(item);
    this.renderUploads();
    promise.then((media) => {
      this.uploads = this.uploads.filter((other) => other !== item);
      const info = { ...media, name: media.name || file.name, mime: media.mime || file.type };
      const kind = (file.type || '').startsWith('audio/') ? 'audio' : mediaKind(info.mime);
      this.session.sendMedia(chatId, info, caption, replyTo, kind);
      this.stickToBottom = true;
      this.schedule();
    }, (err) => {
      if (err.code === 'aborted') this.uploads = this.uploads.filter((other) => other !== item);
      else Object.assign(item, { state: 'failed', failure: uploadFailure(err, file) });
      this.renderUploads();
    });
  }

  renderUploads() {
    const list = $('#uploads');
    const mine = this.uploads.filter((item) => item.chatId === this.chatId);
    list.replaceChildren(...mine.map((item) => {
      const percent = item.total ? Math.floor((100 * item.loaded) / item.total) : 0;
      const label = `${item.file.name || mediaKind(item.file.type)}`;
      if (item.state === 'failed') {
        return h('li', { class: 'upload failed' },
          h('span', { class: 'upload-error', role: 'alert' }, item.failure.text),
          item.failure.retry ? h('button', { type: 'button', class: 'link', onclick: () => this.retryUpload(item) }, 'Retry') : null,
          h('button', { type: 'button', class: 'link', onclick: () => this.dropUpload(item) }, 'Dismiss'));
      }
      return h('li', { class: `upload ${item.state}` },
        h('span', { class: 'upload-name' }, label),
        h('progress', { max: '100', value: String(percent), 'aria-label': `Uploading ${label}` }),
        h('span', { class: 'upload-percent' }, `${percent}%`),
        h('button', { type: 'button', class: 'link', onclick: () => item.abort() }, 'Cancel'));
    }));
    list.hidden = !mine.length;
  }

  retryUpload(item) {
    this.dropUpload(item);
    this.upload(item.chatId, item.file, item.caption, item.replyTo);
  }

  dropUpload(item) {
    this.uploads = this.uploads.filter((other) => other !== item);
    this.renderUploads();
  }
}

/** Ticks change often (delivered, read): swap only them, so a playing video keeps playing. */
function updateTick(node, status) {
  const old = node.querySelector('.meta .tick');
  if (old && old.dataset.status !== status) old.replaceWith(tick(status));
}
