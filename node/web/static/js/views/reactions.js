// Reactions: the quick bar (six emoji and "more"), the chips under a bubble (each emoji
// with its count; ours stands out), and the dialog listing who reacted with what, where our
// own can be taken back. One reaction per person per message; picking it again takes it back.

import { $, h, icon } from '../dom.js';
import { EmojiPicker } from './emoji.js';
import { avatar } from './text.js';

export const QUICK_REACTIONS = ['👍', '❤️', '😂', '😮', '😢', '🙏'];

/** Our own reaction to an entry, or null. */
export function myReaction(entry, meId) {
  for (const group of entry.reactions || []) if (group.users.includes(meId)) return group.emoji;
  return null;
}

/** The quick bar: `onPick(emoji)` for one of them, `onMore()` for the full picker. */
export function reactionBar({ current, onPick, onMore }) {
  return h('div', { class: 'reaction-bar menu-header', role: 'group', 'aria-label': 'React' },
    QUICK_REACTIONS.map((emoji) => h('button', {
      type: 'button', class: `reaction-pick${current === emoji ? ' mine' : ''}`,
      'aria-label': current === emoji ? `Take back your ${emoji}` : `React with ${emoji}`, 'aria-pressed': String(current === emoji),
      onclick: () => onPick(emoji),
    }, emoji)),
    h('button', { type: 'button', class: 'reaction-pick more', 'aria-label': 'More reactions', title: 'More reactions', onclick: onMore },
      icon('plus')));
}

/** A person's own name (not "You"), for avatars. */
function realName(store, userId) {
  const user = store.users.get(userId) || (store.me && store.me.id === userId ? store.me : null);
  return user ? user.display_name || user.username : '?';
}

function names(store, users) {
  const list = users.map((id) => store.nameOf(id));
  if (list.length <= 1) return list.join('');
  return `${list.slice(0, -1).join(', ')} and ${list[list.length - 1]}`;
}

/** The chips under a bubble; a click opens who reacted. */
export function reactionChips(store, entry, onOpen) {
  const groups = entry.reactions || [];
  if (!groups.length) return null;
  return h('div', { class: 'reactions', role: 'group', 'aria-label': 'Reactions' },
    groups.map((group) => {
      const mine = group.users.includes(store.me.id);
      return h('button', {
        type: 'button', class: `reaction${mine ? ' mine' : ''}`, dataset: { emoji: group.emoji },
        'aria-label': `${group.emoji} ${group.users.length}: ${names(store, group.users)}`,
        title: names(store, group.users),
        onclick: () => onOpen(entry, group.emoji),
      }, h('span', { class: 'reaction-emoji' }, group.emoji), group.users.length > 1 ? h('span', { class: 'reaction-count' }, String(group.users.length)) : null);
    }));
}

/**
 * Who reacted with what (a dialog): tabs for All and each emoji, a row per person, ours
 * with "Take back". `onRemove()` takes ours back.
 */
export class ReactionsDialog {
  constructor(store) {
    this.store = store;
    this.dialog = $('#reactions-dialog');
    this.entry = null;
    this.filter = null;
    this.onRemove = null;
  }

  open(entry, emoji, onRemove) {
    this.entry = entry;
    this.filter = emoji || null;
    this.onRemove = onRemove;
    this.render();
    if (!this.dialog.open) this.dialog.showModal();
    const selected = this.dialog.querySelector('.reaction-tab[aria-selected="true"]');
    if (selected) selected.focus();
  }

  /** The entry changed (a live reaction): show what it holds now. */
  update(entry) {
    if (!this.dialog.open || !this.entry || entry.seq !== this.entry.seq || entry.chat !== this.entry.chat) return;
    this.entry = entry;
    if (!(entry.reactions || []).length) {
      this.dialog.close();
      return;
    }
    this.render();
  }

  render() {
    const store = this.store;
    const groups = this.entry.reactions || [];
    if (this.filter && !groups.some((g) => g.emoji === this.filter)) this.filter = null;
    const total = groups.reduce((n, g) => n + g.users.length, 0);
    const tab = (label, emoji, count) => h('button', {
      type: 'button', role: 'tab', class: 'reaction-tab', 'aria-selected': String(this.filter === emoji),
      'aria-label': emoji ? `${emoji} ${count}` : `All ${count}`,
      onclick: () => {
        this.filter = emoji;
        this.render();
        this.dialog.querySelector('.reaction-tab[aria-selected="true"]')?.focus();
      },
    }, label, ` ${count}`);
    const rows = [];
    for (const group of groups) {
      if (this.filter && group.emoji !== this.filter) continue;
      for (const user of group.users) {
        const mine = user === store.me.id;
        rows.push(h('li', { class: 'member', dataset: { user } },
          avatar(realName(store, user), user, null, (store.users.get(user) || {}).photo),
          h('span', { class: 'member-name' }, mine ? 'You' : store.nameOf(user),
            mine ? h('span', { class: 'member-sub' }, 'Select to take it back') : null),
          mine ? h('button', {
            type: 'button', class: 'secondary small', 'aria-label': `Take back your ${group.emoji}`,
            onclick: () => {
              this.dialog.close();
              this.onRemove();
            },
          }, group.emoji, ' Take back') : h('span', { class: 'reaction-emoji big', 'aria-label': group.emoji }, group.emoji)));
      }
    }
    $('#reactions-body').replaceChildren(
      h('div', { class: 'reaction-tabs', role: 'tablist', 'aria-label': 'Reactions' },
        tab('All', null, total), groups.map((g) => tab(g.emoji, g.emoji, g.users.length))),
      h('ul', { class: 'member-list reaction-people', 'aria-label': 'People who reacted' }, rows));
  }
}

/** The full emoji picker in a dialog: resolves to the emoji picked, or null. */
export class MoreReactions {
  constructor() {
    this.dialog = $('#react-dialog');
    this.resolve = null;
    this.picker = new EmojiPicker(null, () => {}, {
      elements: {
        panel: $('#react-picker'), search: $('#react-search'), grid: $('#react-grid'), tabs: $('#react-tabs'),
        empty: $('#react-empty'),
      },
      onPick: (item) => {
        const resolve = this.resolve;
        this.resolve = null;
        this.dialog.close();
        if (resolve) resolve(item.emoji);
      },
    });
    this.dialog.addEventListener('close', () => {
      const resolve = this.resolve;
      this.resolve = null;
      if (resolve) resolve(null);
    });
  }

  pick() {
    this.dialog.showModal();
    this.picker.open();
    return new Promise((resolve) => { this.resolve = resolve; });
  }
}
