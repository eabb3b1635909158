// The emoji picker, bundled with the client (emoji-data.js, loaded the first time it opens):
// groups as tabs, the ones used lately first, and a search by name ("thumbs", "heart").
// A pick goes in at the composer's caret and the picker stays open; arrow keys move in
// the grid, Escape closes it and returns to the composer.

import { $, h } from '../dom.js';

const RECENT = 'chatnode.emoji.recent';
const RECENT_MAX = 24;
const RESULTS_MAX = 160;
const TAB_ICONS = {
  'Smileys & Emotion': '😀', 'People & Body': '👋', 'Animals & Nature': '🐻', 'Food & Drink': '🍔',
  'Travel & Places': '🚗', Activities: '⚽', Objects: '💡', Symbols: '❤️', Flags: '🏁',
};

let groupsPromise = null;

function loadGroups() {
  if (!groupsPromise) {
    groupsPromise = import('../emoji-data.js').then(({ EMOJI_GROUPS }) => EMOJI_GROUPS.map(([name, body]) => ({
      name,
      items: body.split('\n').map((line) => {
        const space = line.indexOf(' ');
        return { emoji: line.slice(0, space), name: line.slice(space + 1) };
      }),
    })));
  }
  return groupsPromise;
}

export class EmojiPicker {
  /**
   * `textarea`: where picks go; `onChange`: called after each insertion. With `elements`
   * ({panel, search, grid, tabs, empty}) and `onPick(item)`, the picker lives elsewhere (the
   * reactions dialog) and hands each pick over instead of inserting it.
   */
  constructor(textarea, onChange, { elements = null, onPick = null } = {}) {
    this.textarea = textarea;
    this.onChange = onChange;
    this.onPick = onPick;
    this.panel = elements ? elements.panel : $('#emoji-panel');
    this.toggleButton = elements ? null : $('#emoji-toggle');
    this.search = elements ? elements.search : $('#emoji-search');
    this.grid = elements ? elements.grid : $('#emoji-grid');
    this.tabs = elements ? elements.tabs : $('#emoji-tabs');
    this.empty = elements ? elements.empty : $('#emoji-empty');
    this.groups = null;
    this.active = null; // group name shown
    if (elements) {
      this.grid.addEventListener('keydown', (e) => {
        if (e.target.classList.contains('emoji')) this.onGridKey(e);
      });
      this.search.addEventListener('input', () => this.render());
      this.search.addEventListener('keydown', (e) => {
        if (e.key === 'ArrowDown' || (e.key === 'Enter' && this.search.value.trim())) {
          e.preventDefault();
          const first = this.grid.querySelector('.emoji');
          if (first && e.key === 'Enter') first.click();
          else if (first) first.focus();
        }
      });
      return;
    }
    this.toggleButton.addEventListener('click', () => (this.panel.hidden ? this.open() : this.close(true)));
    this.search.addEventListener('input', () => this.render());
    this.search.addEventListener('keydown', (e) => {
      if (e.key === 'ArrowDown' || (e.key === 'Enter' && this.search.value.trim())) {
        e.preventDefault();
        const first = this.grid.querySelector('.emoji');
        if (!first) return;
        if (e.key === 'Enter') first.click();
        else first.focus();
      }
    });
    this.panel.addEventListener('keydown', (e) => {
      if (e.key === 'Escape') {
        e.preventDefault();
        e.stopPropagation();
        this.close(true);
      } else if (e.target.classList.contains('emoji')) {
        this.onGridKey(e);
      }
    });
    document.addEventListener('pointerdown', (e) => {
      if (!this.panel.hidden && !this.panel.contains(e.target) && !this.toggleButton.contains(e.target)
        && e.target !== this.textarea) this.close(false);
    });
  }

  async open() {
    this.panel.hidden = false;
    if (this.toggleButton) this.toggleButton.setAttribute('aria-expanded', 'true');
    this.search.value = '';
    if (!this.groups) this.groups = await loadGroups();
    this.active = this.recent().length ? 'Recent' : this.active || this.groups[0].name;
    this.render();
    this.search.focus();
  }

  close(refocus) {
    if (this.panel.hidden) return;
    this.panel.hidden = true;
    this.toggleButton.setAttribute('aria-expanded', 'false');
    if (refocus) this.textarea.focus();
  }

  recent() {
    try {
      const list = JSON.parse(localStorage.getItem(RECENT) || '[]');
      return Array.isArray(list) ? list : [];
    } catch (err) {
      return [];
    }
  }

  remember(item) {
    const list = [item, ...this.recent().filter((other) => other.emoji !== item.emoji)].slice(0, RECENT_MAX);
    localStorage.setItem(RECENT, JSON.stringify(list));
  }

  pick(item) {
    if (this.onPick) {
      this.remember(item);
      this.onPick(item);
      return;
    }
    const text = this.textarea;
    const start = text.selectionStart ?? text.value.length;
    const end = text.selectionEnd ?? start;
    text.setRangeText(item.emoji, start, end, 'end');
    this.remember(item);
    this.onChange();
  }

  render() {
    if (!this.groups) return;
    const query = this.search.value.trim().toLowerCase();
    const recent = this.recent();
    const tabs = [...(recent.length ? [{ name: 'Recent', icon: '🕘' }] : []),
      ...this.groups.map((group) => ({ name: group.name, icon: TAB_ICONS[group.name] || group.items[0].emoji }))];
    this.tabs.replaceChildren(...tabs.map((tab) => h('button', {
      type: 'button', class: `emoji-tab${!query && tab.name === this.active ? ' active' : ''}`, role: 'tab',
      'aria-selected': String(!query && tab.name === this.active), 'aria-label': tab.name, title: tab.name,
      onclick: () => {
        this.search.value = '';
        this.active = tab.name;
        this.render();
      },
    }, tab.icon)));
    let items;
    let label;
    if (query) {
      const words = query.split(/\s+/);
      const all = this.groups.flatMap((group) => group.items);
      items = all.filter((item) => words.every((word) => item.name.includes(word)));
      items.sort((a, b) => (b.name.startsWith(query) - a.name.startsWith(query)) || 0);
      items = items.slice(0, RESULTS_MAX);
      label = `Emoji matching “${this.search.value.trim()}”`;
    } else {
      items = this.active === 'Recent' ? recent : (this.groups.find((g) => g.name === this.active) || this.groups[0]).items;
      label = this.active;
    }
    this.grid.setAttribute('aria-label', label);
    this.grid.replaceChildren(...items.map((item, i) => h('button', {
      type: 'button', class: 'emoji', tabindex: i === 0 ? '0' : '-1', 'aria-label': item.name, title: item.name,
      onclick: () => this.pick(item),
    }, item.emoji)));
    this.grid.scrollTop = 0;
    const empty = this.empty;
    empty.hidden = items.length > 0;
    empty.textContent = query ? `No emoji match “${this.search.value.trim()}”.` : 'Nothing here yet.';
  }

  /** Arrow keys move through the grid (one tab stop for all of it). */
  onGridKey(e) {
    const buttons = [...this.grid.querySelectorAll('.emoji')];
    const i = buttons.indexOf(e.target);
    const top = buttons[0].offsetTop;
    const wrap = buttons.findIndex((b) => b.offsetTop !== top);
    const columns = wrap === -1 ? buttons.length : wrap;
    const step = { ArrowLeft: -1, ArrowRight: 1, ArrowUp: -columns, ArrowDown: columns }[e.key];
    if (step === undefined) return;
    e.preventDefault();
    if (e.key === 'ArrowUp' && i - columns < 0) {
      this.search.focus();
      return;
    }
    const next = buttons[Math.max(0, Math.min(buttons.length - 1, i + step))];
    e.target.tabIndex = -1;
    next.tabIndex = 0;
    next.focus();
  }
}
