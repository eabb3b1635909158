// Mentions in groups: typing "@" and a few letters in the composer lists the members whose
// name or username starts so (arrow keys, Enter or Tab to pick, Escape to close); a pick puts
// "@Name" in the text and remembers whom it names. The message carries the ids still named in
// its text (`mentions`); in the bubble each "@Name" of a mentioned member is highlighted, and
// a mention of us stands out.

import { $, h } from '../dom.js';
import { avatar } from './text.js';

const MAX_SUGGESTIONS = 8;

/** The name a mention writes for a user. */
export function mentionName(user) {
  return user.display_name || user.username;
}

export class MentionPicker {
  /** `textarea`: the composer; `membersOf()`: [{user}] of the open group (or null elsewhere). */
  constructor(textarea, membersOf, meId, onChange) {
    this.textarea = textarea;
    this.membersOf = membersOf;
    this.meId = meId;
    this.onChange = onChange;
    this.box = $('#mention-list');
    this.picked = new Map(); // user id -> the name written for them
    this.matches = [];
    this.index = 0;
    this.start = -1; // where the "@" being completed is
    this.box.addEventListener('mousedown', (e) => e.preventDefault()); // the composer keeps the focus
  }

  get open() {
    return !this.box.hidden;
  }

  /** After each input: is the caret just after "@letters"? */
  update() {
    const members = this.membersOf();
    const text = this.textarea.value;
    const caret = this.textarea.selectionStart ?? text.length;
    const before = text.slice(0, caret);
    const match = /(^|[\s(])@([\p{L}\p{N}_.]{0,32})$/u.exec(before);
    if (!members || !match) {
      this.close();
      return;
    }
    const query = match[2].toLowerCase();
    this.start = caret - match[2].length - 1;
    this.matches = members.map((m) => m.user).filter((user) => user.id !== this.meId()
      && (mentionName(user).toLowerCase().split(/\s+/).some((word) => word.startsWith(query))
        || mentionName(user).toLowerCase().startsWith(query) || user.username.startsWith(query)))
      .slice(0, MAX_SUGGESTIONS);
    if (!this.matches.length) {
      this.close();
      return;
    }
    this.index = Math.min(this.index, this.matches.length - 1);
    this.render();
  }

  render() {
    this.box.hidden = false;
    this.textarea.setAttribute('aria-expanded', 'true');
    this.textarea.setAttribute('aria-controls', 'mention-list');
    this.box.replaceChildren(...this.matches.map((user, i) => h('li', {
      id: `mention-${user.id}`, role: 'option', class: `mention-option${i === this.index ? ' active' : ''}`,
      'aria-selected': String(i === this.index),
      onclick: () => this.pick(user),
    }, avatar(mentionName(user), user.id, null, user.photo), h('span', { class: 'mention-name' }, mentionName(user)),
    h('span', { class: 'muted small' }, ` @${user.username}`))));
    this.textarea.setAttribute('aria-activedescendant', `mention-${this.matches[this.index].id}`);
  }

  close() {
    if (this.box.hidden) return;
    this.box.hidden = true;
    this.box.replaceChildren();
    this.textarea.setAttribute('aria-expanded', 'false');
    this.textarea.removeAttribute('aria-activedescendant');
    this.index = 0;
  }

  /** Keys while the list is open; true if the key was taken. */
  onKey(e) {
    if (!this.open) return false;
    if (e.key === 'ArrowDown' || e.key === 'ArrowUp') {
      e.preventDefault();
      const step = e.key === 'ArrowDown' ? 1 : -1;
      this.index = (this.index + step + this.matches.length) % this.matches.length;
      this.render();
      return true;
    }
    if (e.key === 'Enter' || e.key === 'Tab') {
      e.preventDefault();
      this.pick(this.matches[this.index]);
      return true;
    }
    if (e.key === 'Escape') {
      e.preventDefault();
      this.close();
      return true;
    }
    return false;
  }

  pick(user) {
    const text = this.textarea;
    const caret = text.selectionStart ?? text.value.length;
    const name = mentionName(user);
    text.setRangeText(`@${name} `, this.start, caret, 'end');
    this.picked.set(user.id, name);
    this.close();
    this.onChange();
    text.focus();
  }

  /** The ids the text still names ("@Name" as picked), for the message's `mentions`. */
  mentionsIn(text) {
    const ids = [];
    for (const [id, name] of this.picked) if (text.includes(`@${name}`)) ids.push(id);
    return ids;
  }

  reset() {
    this.picked.clear();
    this.close();
  }
}

/** Highlight "@Name" of each mentioned member in the rendered text (DOM text nodes only). */
export function highlightMentions(root, entry, store) {
  const ids = entry.mentions || [];
  if (!ids.length) return;
  const names = [];
  for (const id of ids) {
    const user = store.users.get(id) || (store.me && store.me.id === id ? store.me : null);
    if (!user) continue;
    for (const name of new Set([mentionName(user), user.username])) names.push({ text: `@${name}`, me: id === store.me.id });
  }
  names.sort((a, b) => b.text.length - a.text.length); // the longest first: "@Ann Lee" before "@Ann"
  if (!names.length) return;
  const walker = document.createTreeWalker(root, NodeFilter.SHOW_TEXT, {
    acceptNode: (node) => (node.parentElement.closest('code, pre, a, .mention') ? NodeFilter.FILTER_REJECT : NodeFilter.FILTER_ACCEPT),
  });
  const nodes = [];
  while (walker.nextNode()) nodes.push(walker.currentNode);
  for (let node of nodes) {
    let found = true;
    while (found && node) {
      found = false;
      let best = null;
      for (const name of names) {
        const at = node.data.indexOf(name.text);
        if (at >= 0 && (best === null || at < best.at)) best = { at, name };
      }
      if (!best) break;
      const match = node.splitText(best.at);
      const rest = match.splitText(best.name.text.length);
      const span = h('span', { class: `mention${best.name.me ? ' me' : ''}` }, match.data);
      match.replaceWith(span);
      node = rest;
      found = true;
    }
  }
}
