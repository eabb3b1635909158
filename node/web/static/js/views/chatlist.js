// The sidebar: who I am, the chat list (newest first, live), and search for chats and people.

import { $, h, icon } from '../dom.js';
import { listTime } from '../format.js';
import { isMuted } from '../store.js';
import { chatMenuItems } from './chatactions.js';
import { isMenuKey, onContextMenu, openMenu } from './menu.js';
import { avatar, chatAvatarId, chatPhoto, chatTitle, entryText } from './text.js';

export class ChatListView {
  constructor(store, session, { onOpen, onStartDirect, onShowMessage, actionsContext }) {
    this.store = store;
    this.session = session;
    this.onOpen = onOpen;
    this.onShowMessage = onShowMessage;
    this.found = null; // messages matching the search: {query, results, next, failed}
    this.onStartDirect = onStartDirect;
    this.actionsContext = actionsContext; // {store, session, dialogs, toast, onOpenChat}
    this.showArchived = false;
    this.list = $('#chat-list');
    this.search = $('#search');
    this.query = '';
    this.people = [];
    this.peopleFor = null; // the query the people list answers
    this.peopleFailed = false;
    this.searchTimer = null;
    this.searchSeq = 0;
    this.search.addEventListener('input', () => this.onSearch());
    $('#message-results-more').addEventListener('click', () => this.moreMessages());
    $('#search-scope-clear').addEventListener('click', () => {
      this.searchIn(null);
      this.search.focus();
    });
    this.scope = null; // a chat id: messages are searched in that chat only
    this.search.addEventListener('keydown', (e) => {
      if (e.key === 'Escape' && this.search.value) {
        e.preventDefault();
        this.search.value = '';
        this.onSearch();
      } else if (e.key === 'Escape' && this.scope) {
        e.preventDefault();
        this.searchIn(null); // then back to searching everything
      }
    });
    store.addEventListener('change', (e) => {
      const { what } = e.detail;
      if (['chats', 'active', 'typing', 'users', 'outbox', 'receipts', 'messages', 'blocked'].includes(what)) this.schedule();
    });
  }

  schedule() {
    if (this.pending) return;
    this.pending = true;
    requestAnimationFrame(() => {
      this.pending = false;
      this.render();
    });
  }

  renderMe() {
    const me = this.store.me;
    $('#me-name').textContent = me.display_name || me.username;
    avatar(me.display_name || me.username, me.id, $('#me-avatar'), me.photo);
  }

  onSearch() {
    this.query = this.search.value.trim().toLowerCase();
    clearTimeout(this.searchTimer);
    this.render();
    if (!this.query) {
      this.people = [];
      this.peopleFor = null;
      this.found = { query: null, results: [], next: null, failed: false };
      this.renderPeople();
      this.renderMessages();
      return;
    }
    const seq = ++this.searchSeq;
    const query = this.query;
    this.searchTimer = setTimeout(async () => {
      const words = /[\p{L}\p{N}]/u.test(query);
      const [people, messages] = await Promise.allSettled([
        this.scope ? Promise.resolve([]) : this.session.api.searchUsers(query.replace(/^@/, '')),
        words ? this.session.api.searchMessages(query, undefined, this.scope || undefined)
          : Promise.resolve({ results: [], next: null }),
      ]);
      if (seq !== this.searchSeq) return;
      this.people = people.status === 'fulfilled' ? people.value : [];
      this.peopleFor = query;
      this.peopleFailed = people.status !== 'fulfilled';
      this.found = messages.status === 'fulfilled'
        ? { query, results: messages.value.results, next: messages.value.next, failed: false }
        : { query, results: [], next: null, failed: true };
      this.renderPeople();
      this.renderMessages();
    }, 250);
  }

  /** Search the messages of one chat (null: every chat, chats and people too). */
  searchIn(chatId) {
    this.scope = chatId;
    const chat = chatId ? this.store.chats.get(chatId) : null;
    $('#search-scope').hidden = !chat;
    $('#search-scope-text').textContent = chat ? `Messages in “${chatTitle(chat)}”` : '';
    this.search.placeholder = chat ? 'Search messages in this chat' : 'Search chats, people and messages';
    this.onSearch();
  }

  /** Messages matching the search (GET /api/search), the newest first; a click shows one in its chat. */
  renderMessages() {
    const found = this.found || { results: [] };
    const section = $('#message-results');
    const terms = (found.query || '').split(/[^\p{L}\p{N}]+/u).filter(Boolean);
    $('#message-results-list').replaceChildren(...found.results.map(({ chat: chatId, message }) => {
      const chat = this.store.chats.get(chatId);
      const where = chat ? chatTitle(chat) : 'A chat';
      const who = this.store.nameOf(message.from);
      const heading = chat && chat.kind === 'group' ? `${who} · ${where}` : where;
      return h('li', null, h('button', {
        type: 'button', class: 'chat-item result-item', dataset: { chat: chatId, seq: message.seq },
        onclick: () => this.onShowMessage(chatId, message.seq),
      },
      chat ? avatar(where, chatAvatarId(chat), null, chatPhoto(chat)) : avatar(where, chatId),
      h('span', { class: 'chat-main' },
        h('span', { class: 'chat-line' }, h('span', { class: 'chat-name' }, heading),
          h('time', { class: 'chat-time' }, listTime(message.ts))),
        h('span', { class: 'chat-line' }, h('span', { class: 'preview' }, highlight(entryText(this.store, message), terms))))));
    }));
    section.hidden = !this.query || !found.results.length;
    $('#message-results-more').hidden = !found.next;
    this.renderNoMatch();
  }

  async moreMessages() {
    const found = this.found;
    if (!found || !found.next) return;
    try {
      const page = await this.session.api.searchMessages(found.query, found.next, this.scope || undefined);
      if (this.found !== found) return;
      found.results.push(...page.results);
      found.next = page.next;
      this.renderMessages();
    } catch (err) { /* the button stays; trying again may work */ }
  }

  renderPeople() {
    const section = $('#people');
    const list = $('#people-list');
    list.replaceChildren(...this.people.map((user) => h('li', null,
      h('button', { type: 'button', class: 'chat-item', onclick: () => this.startDirect(user) },
        avatar(user.display_name || user.username, user.id, null, user.photo),
        h('span', { class: 'chat-main' },
          h('span', { class: 'chat-line' }, h('span', { class: 'chat-name' }, user.display_name || user.username)),
          h('span', { class: 'chat-line' }, h('span', { class: 'preview' }, `@${user.username}`)))))));
    section.hidden = !this.query || !this.people.length;
    this.renderNoMatch();
  }

  /** Searching found nothing (chats, and people and messages once the node answered): say so. */
  renderNoMatch() {
    const empty = $('#search-empty');
    const chats = this.list.childElementCount;
    const answered = this.query && this.peopleFor === this.query;
    const messages = this.found && this.found.query === this.query ? this.found.results.length : 0;
    empty.hidden = !answered || chats > 0 || this.people.length > 0 || messages > 0;
    const typed = this.search.value.trim();
    if (this.scope) {
      empty.textContent = this.found && this.found.failed ? 'Messages can’t be searched right now.'
        : `No messages in this chat match “${typed}”.`;
      return;
    }
    empty.textContent = this.peopleFailed || (this.found && this.found.failed)
      ? `No chats match “${typed}”, and people and messages can’t be searched right now.`
      : `No chats, people or messages match “${typed}”.`;
  }

  async startDirect(user) {
    this.search.value = '';
    this.onSearch();
    await this.onStartDirect(user.id);
  }

  render() {
    if (!this.store.me) return;
    this.renderMe();
    const shown = this.store.sortedChats().filter((chat) => !chat.hidden || this.store.activeChatId === chat.id);
    const archived = shown.filter((chat) => chat.archived);
    if (!archived.length) this.showArchived = false;
    const chats = shown.filter((chat) => !(this.query && this.scope))
      .filter((chat) => (this.query ? true : Boolean(chat.archived) === this.showArchived))
      .filter((chat) => !this.query || chatTitle(chat).toLowerCase().includes(this.query)
        || (chat.peer && chat.peer.username.includes(this.query)));
    const rows = chats.map((chat) => this.item(chat));
    if (!this.query && this.showArchived) rows.unshift(this.archiveHeader());
    else if (!this.query && archived.length) rows.unshift(this.archiveRow(archived));
    const focused = this.rowSelector(document.activeElement);
    this.list.replaceChildren(...rows);
    if (focused) { // the keyboard focus stays on its row when the list is redrawn
      const again = this.list.querySelector(focused);
      if (again) again.focus({ preventScroll: true });
    }
    $('#chat-list-empty').hidden = chats.length > 0 || !!this.query || this.showArchived || archived.length > 0;
    this.renderNoMatch();
    const total = this.store.totalUnread();
    document.title = total ? `(${total}) chatnode` : 'chatnode';
  }

  /** The row that opens the archive: how many archived chats have unread messages. */
  archiveRow(archived) {
    const unread = archived.filter((chat) => chat.unread || chat.marked_unread).length;
    return h('li', null, h('button', {
      type: 'button', class: 'chat-item archive-row', dataset: { row: 'archive' },
      'aria-label': `Archived chats${unread ? `, ${unread} unread` : ''}`,
      onclick: () => {
        this.showArchived = true;
        this.render();
        this.list.querySelector('[data-row="archive-back"]')?.focus();
      },
    }, h('span', { class: 'archive-icon' }, icon('archive')), h('span', { class: 'chat-name' }, 'Archived'),
    unread ? h('span', { class: 'archive-count' }, String(unread)) : null));
  }

  archiveHeader() {
    return h('li', null, h('button', {
      type: 'button', class: 'chat-item archive-row', dataset: { row: 'archive-back' }, 'aria-label': 'Back to all chats',
      onclick: () => {
        this.showArchived = false;
        this.render();
        this.list.querySelector('[data-row="archive"]')?.focus();
      },
    }, h('span', { class: 'archive-icon' }, icon('back')), h('span', { class: 'chat-name' }, 'Archived chats')));
  }

  /** A selector that finds `element`'s counterpart in the list once redrawn, or null. */
  rowSelector(element) {
    if (!element || !this.list.contains(element)) return null;
    const { chat, menu, row } = element.dataset;
    if (chat) return `[data-chat="${chat}"]${menu ? '[data-menu]' : ':not([data-menu])'}`;
    return row ? `[data-row="${row}"]` : null;
  }

  openChatMenu(chat, at) {
    const items = chatMenuItems(this.actionsContext, chat);
    const selector = this.rowSelector(document.activeElement);
    const findAgain = selector && (() => this.list.querySelector(selector));
    openMenu({ items, at, label: `Chat options for ${chatTitle(chat)}`, findAgain });
  }

  item(chat) {
    const store = this.store;
    const title = chatTitle(chat);
    const last = chat.last_message;
    const typers = store.typers(chat.id);
    let preview;
    if (typers.length) {
      preview = h('span', { class: 'preview typing' }, chat.kind === 'group' ? `${store.nameOf(typers[0])} is typing…` : 'typing…');
    } else if (last && !(last.expires_at && last.expires_at <= this.session.socket.now())) {
      const own = last.from === store.me.id && last.kind !== 'system' && last.kind !== 'deleted';
      const sender = chat.kind === 'group' && !own && last.from && last.kind !== 'system' && last.kind !== 'deleted'
        ? `${store.nameOf(last.from)}: ` : '';
      preview = h('span', { class: 'preview' },
        own ? tick(store.statusOf(chat, last)) : null,
        sender + entryText(store, last));
    } else {
      preview = h('span', { class: 'preview muted' }, chat.kind === 'group' ? `${chat.members || ''} members` : '');
    }
    const unread = chat.unread || 0;
    const active = store.activeChatId === chat.id;
    const muted = isMuted(chat);
    const states = [chat.pinned ? 'pinned' : null, muted ? 'muted' : null, chat.archived ? 'archived' : null].filter(Boolean);
    const row = h('li', { class: 'chat-row' },
      h('button', {
        type: 'button', class: `chat-item${active ? ' active' : ''}${unread || chat.marked_unread ? ' has-unread' : ''}${muted ? ' is-muted' : ''}`,
        'aria-current': active ? 'true' : null, dataset: { chat: chat.id },
        'aria-description': states.length ? states.join(', ') : null,
        onclick: () => {
          if (active && chat.marked_unread) this.session.markRead(chat.id); // opened again: read
          this.onOpen(chat.id);
        },
        onkeydown: (e) => {
          if (isMenuKey(e)) {
            e.preventDefault();
            this.openChatMenu(chat, e.currentTarget);
          }
        },
      },
      avatar(title, chatAvatarId(chat), null, chatPhoto(chat)),
      h('span', { class: 'chat-main' },
        h('span', { class: 'chat-line' },
          h('span', { class: 'chat-name' }, title),
          h('time', { class: 'chat-time' }, chat.updated ? listTime(chat.updated) : '')),
        h('span', { class: 'chat-line' },
          preview,
          muted ? h('span', { class: 'state-icon', role: 'img', 'aria-label': 'Muted', title: 'Muted' }, icon('bell-off')) : null,
          chat.pinned ? h('span', { class: 'state-icon', role: 'img', 'aria-label': 'Pinned', title: 'Pinned' }, icon('pin')) : null,
          unread ? h('span', { class: `unread${muted ? ' muted-count' : ''}`, 'aria-label': `${unread} unread` }, unread > 99 ? '99+' : String(unread))
            : chat.marked_unread ? h('span', { class: 'unread mark', role: 'img', 'aria-label': 'Marked as unread', title: 'Marked as unread' }) : null))),
      h('button', {
        type: 'button', class: 'icon-button small chat-menu-button', 'aria-label': `Chat options for ${title}`, title: 'Chat options',
        'aria-haspopup': 'menu', dataset: { chat: chat.id, menu: '1' },
        onclick: (e) => {
          e.stopPropagation();
          this.openChatMenu(chat, e.currentTarget);
        },
      }, icon('down')));
    onContextMenu(row, (at) => this.openChatMenu(chat, at));
    return row;
  }
}

/** Text with the searched words marked (as DOM nodes: <mark>, never HTML). */
function highlight(text, terms) {
  if (!terms.length) return text;
  const escaped = terms.map((t) => t.replace(/[.*+?^${}()|[\]\\]/g, '\\$&'));
  const pattern = new RegExp(`(?<![\\p{L}\\p{N}])(${escaped.join('|')})`, 'giu');
  const out = [];
  let last = 0;
  for (const match of text.matchAll(pattern)) {
    if (match.index > last) out.push(text.slice(last, match.index));
    out.push(h('mark', null, match[0]));
    last = match.index + match[0].length;
  }
  out.push(text.slice(last));
  return out;
}

export function tick(status) {
  const label = { pending: 'Waiting to send', sent: 'Sent', delivered: 'Delivered', read: 'Read', failed: 'Not sent' }[status] || status;
  const name = { pending: 'clock', sent: 'check', delivered: 'check2', read: 'check2', failed: 'alert' }[status] || 'check';
  return h('span', { class: `tick tick-${status}`, role: 'img', 'aria-label': label, title: label, dataset: { status } }, icon(name));
}
