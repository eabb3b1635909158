// Starred messages (#starred, in place of the chat list): every message we starred, the newest
// first, with its chat and sender; a click opens the chat at that message.

import { $, h, icon } from '../dom.js';
import { errorText } from '../errors.js';
import { listTime } from '../format.js';
import { avatar, chatAvatarId, chatPhoto, chatTitle, entryText } from './text.js';

export class StarredView {
  constructor(store, session, { onClose, onShow }) {
    this.store = store;
    this.session = session;
    this.onClose = onClose;
    this.onShow = onShow; // (chatId, seq): open the chat at that message
    this.root = $('#starred-view');
    this.isOpen = false;
    this.offset = 0;
    this.hasMore = false;
    this.messages = [];
    $('#starred-back').addEventListener('click', () => this.onClose());
    $('#starred-more').addEventListener('click', () => this.load(false));
    document.addEventListener('keydown', (e) => {
      if (this.isOpen && e.key === 'Escape' && !document.querySelector('dialog[open]') && !document.querySelector('#popup-menu')
        && (this.root.contains(e.target) || e.target === document.body)) {
        e.preventDefault();
        this.onClose();
      }
    });
    store.addEventListener('change', (e) => {
      if (this.isOpen && e.detail.what === 'starred') this.load(true);
    });
  }

  open() {
    this.isOpen = true;
    this.root.hidden = false;
    document.body.classList.add('starred-open');
    this.load(true);
    $('#starred-title').focus();
  }

  close() {
    if (!this.isOpen) return;
    const hadFocus = this.root.contains(document.activeElement);
    this.isOpen = false;
    this.root.hidden = true;
    document.body.classList.remove('starred-open');
    if (hadFocus) $('#open-starred').focus();
  }

  async load(fresh) {
    if (fresh) {
      this.offset = 0;
      this.messages = [];
    }
    $('#starred-status').textContent = 'Loading…';
    try {
      const page = await this.session.api.starred(this.offset, 50);
      for (const entry of page.messages) if (entry.from && !this.store.users.has(entry.from)) this.session.ensureUser(entry.from);
      this.messages.push(...page.messages);
      this.offset = page.next_offset;
      this.hasMore = page.has_more;
      $('#starred-status').textContent = this.messages.length ? '' : 'No starred messages. Star a message from its menu to find it here.';
    } catch (err) {
      $('#starred-status').textContent = errorText(err);
    }
    this.render();
  }

  render() {
    const store = this.store;
    $('#starred-more').hidden = !this.hasMore;
    $('#starred-list').replaceChildren(...this.messages.map((entry) => {
      const chat = store.chats.get(entry.chat);
      const where = chat ? chatTitle(chat) : 'A chat';
      const who = store.nameOf(entry.from);
      const heading = chat && chat.kind === 'direct' ? who : `${who} · ${where}`;
      return h('li', null, h('button', {
        type: 'button', class: 'chat-item starred-item', dataset: { chat: entry.chat, seq: entry.seq },
        onclick: () => this.onShow(entry.chat, entry.seq),
      },
      chat ? avatar(where, chatAvatarId(chat), null, chatPhoto(chat)) : avatar(where, entry.chat),
      h('span', { class: 'chat-main' },
        h('span', { class: 'chat-line' }, h('span', { class: 'chat-name' }, heading),
          h('time', { class: 'chat-time' }, listTime(entry.ts))),
        h('span', { class: 'chat-line' }, icon('star', 'star-mark'), h('span', { class: 'preview' }, entryText(store, entry))))));
    }));
  }
}
