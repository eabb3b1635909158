// Popup menus (role="menu"): opened from a button, a right-click, a long press on a phone,
// or the keyboard (the context-menu key, Shift+F10). Arrow keys, Home and End move, Enter or
// Space picks, a letter jumps to the next item starting with it; Escape, Tab or a click
// elsewhere closes it and the focus goes back where it was.

import { h, icon } from '../dom.js';

const LONG_PRESS = 500; // ms a finger rests before the menu opens
const MOVE_TOLERANCE = 10; // px a resting finger may move

let current = null; // {root, returnFocus, findAgain, onClose}

/**
 * Open a menu. `items`: {label, icon?, danger?, checked?, onSelect} objects, `'-'` for a
 * separator, falsy ones skipped. `at`: {x, y} (a pointer) or an element to sit under.
 * `header`: a node shown above the items (the reactions bar). The focus goes back to
 * `returnFocus` when it closes; if a redraw replaced that element meanwhile (news redrew the
 * list it was in), to what `findAgain()` returns: its counterpart in the new rows.
 * Returns the menu element.
 */
export function openMenu({ items, at, label, header = null, returnFocus = document.activeElement, findAgain = null, onClose = null }) {
  closeMenu(false);
  const buttons = [];
  const rows = [];
  for (const item of items) {
    if (!item) continue;
    if (item === '-') {
      if (rows.length && rows[rows.length - 1].getAttribute('role') !== 'separator') rows.push(h('li', { role: 'separator', class: 'menu-sep' }));
      continue;
    }
    const button = h('button', {
      type: 'button', role: 'menuitem', class: `menu-item${item.danger ? ' danger-text' : ''}`, tabindex: '-1',
      'aria-checked': item.checked === undefined ? null : String(item.checked),
      onclick: (e) => {
        e.stopPropagation();
        closeMenu(false);
        focusBack(returnFocus, findAgain);
        item.onSelect();
      },
    }, item.icon ? icon(item.icon) : h('span', { class: 'menu-icon-space' }), h('span', null, item.label));
    buttons.push(button);
    rows.push(h('li', { role: 'none' }, button));
  }
  while (rows.length && rows[rows.length - 1].getAttribute('role') === 'separator') rows.pop();
  const list = h('ul', { role: 'menu', 'aria-label': label || 'Menu', class: 'menu-list' }, rows);
  const root = h('div', { class: 'menu', id: 'popup-menu' }, header, list);
  document.body.append(root);
  place(root, at);
  current = { root, returnFocus, findAgain, onClose };
  const headerButtons = header ? [...header.querySelectorAll('button')] : [];
  root.addEventListener('keydown', (e) => onKey(e, buttons, headerButtons));
  root.addEventListener('contextmenu', (e) => e.preventDefault());
  setTimeout(() => {
    document.addEventListener('pointerdown', onOutside, true);
    window.addEventListener('resize', onResize);
  });
  (headerButtons[0] || buttons[0] || root).focus({ preventScroll: true });
  return root;
}

export function closeMenu(restoreFocus = true) {
  if (!current) return;
  const { root, returnFocus, findAgain, onClose } = current;
  current = null;
  root.remove();
  document.removeEventListener('pointerdown', onOutside, true);
  window.removeEventListener('resize', onResize);
  if (restoreFocus) focusBack(returnFocus, findAgain);
  if (onClose) onClose();
}

function focusBack(returnFocus, findAgain) {
  const target = returnFocus && !returnFocus.isConnected && findAgain ? findAgain() : returnFocus;
  if (target && target.isConnected) target.focus({ preventScroll: true });
}

export function menuOpen() {
  return current !== null;
}

function onOutside(e) {
  if (current && !current.root.contains(e.target)) closeMenu(false);
}

function onResize() {
  closeMenu(false);
}

function place(root, at) {
  const margin = 8;
  const width = root.offsetWidth;
  const height = root.offsetHeight;
  let x;
  let y;
  if (at instanceof Element) {
    const box = at.getBoundingClientRect();
    x = box.right - width;
    if (x < margin) x = box.left;
    y = box.bottom + 4;
    if (y + height > window.innerHeight - margin) y = box.top - height - 4;
  } else {
    x = at.x;
    y = at.y;
    if (x + width > window.innerWidth - margin) x = at.x - width;
    if (y + height > window.innerHeight - margin) y = at.y - height;
  }
  root.style.left = `${Math.max(margin, Math.min(x, window.innerWidth - width - margin))}px`;
  root.style.top = `${Math.max(margin, Math.min(y, window.innerHeight - height - margin))}px`;
}

function onKey(e, buttons, headerButtons) {
  const index = buttons.indexOf(document.activeElement);
  const inHeader = headerButtons.indexOf(document.activeElement);
  const move = (to) => {
    e.preventDefault();
    if (buttons.length) buttons[(to + buttons.length) % buttons.length].focus();
  };
  if (inHeader >= 0 && ['ArrowLeft', 'ArrowRight', 'ArrowDown', 'ArrowUp'].includes(e.key)) {
    e.preventDefault();
    if (e.key === 'ArrowLeft' || e.key === 'ArrowRight') {
      const step = e.key === 'ArrowRight' ? 1 : -1;
      headerButtons[(inHeader + step + headerButtons.length) % headerButtons.length].focus();
    } else if (e.key === 'ArrowDown' && buttons.length) buttons[0].focus();
    return;
  }
  if (index === 0 && e.key === 'ArrowUp' && headerButtons.length) {
    e.preventDefault();
    headerButtons[0].focus();
    return;
  }
  switch (e.key) {
    case 'ArrowDown': move(index + 1); break;
    case 'ArrowUp': move(index < 0 ? buttons.length - 1 : index - 1); break;
    case 'Home': move(0); break;
    case 'End': move(buttons.length - 1); break;
    case 'Escape':
      e.preventDefault();
      e.stopPropagation();
      closeMenu(true);
      break;
    case 'Tab':
      e.preventDefault();
      closeMenu(true);
      break;
    default:
      if (e.key.length === 1 && /\S/.test(e.key) && inHeader < 0) {
        const letter = e.key.toLowerCase();
        for (let step = 1; step <= buttons.length; step++) {
          const candidate = buttons[(index + step + buttons.length) % buttons.length];
          if (candidate.textContent.trim().toLowerCase().startsWith(letter)) {
            e.preventDefault();
            candidate.focus();
            break;
          }
        }
      }
  }
}

/** Whether a key event asks for a context menu (the menu key, or Shift+F10). */
export function isMenuKey(e) {
  return e.key === 'ContextMenu' || (e.key === 'F10' && e.shiftKey);
}

/**
 * Call `open({x, y})` on a right-click or a long press on `element` (a long press swallows
 * the click that follows it, so it does not also open what was pressed).
 */
export function onContextMenu(element, open) {
  element.addEventListener('contextmenu', (e) => {
    if (e.target.closest('a[href], input, textarea, audio, video')) return; // their own menus
    e.preventDefault();
    open({ x: e.clientX, y: e.clientY });
  });
  let timer = null;
  let start = null;
  let fired = false;
  element.addEventListener('touchstart', (e) => {
    if (e.touches.length !== 1) return;
    const touch = e.touches[0];
    start = { x: touch.clientX, y: touch.clientY };
    fired = false;
    clearTimeout(timer);
    timer = setTimeout(() => {
      fired = true;
      if (navigator.vibrate) navigator.vibrate(15);
      open(start);
    }, LONG_PRESS);
  }, { passive: true });
  element.addEventListener('touchmove', (e) => {
    const touch = e.touches[0];
    if (start && touch && Math.hypot(touch.clientX - start.x, touch.clientY - start.y) > MOVE_TOLERANCE) clearTimeout(timer);
  }, { passive: true });
  const end = (e) => {
    clearTimeout(timer);
    if (fired && e.cancelable) e.preventDefault(); // no click after the long press
  };
  element.addEventListener('touchend', end);
  element.addEventListener('touchcancel', () => clearTimeout(timer));
  element.addEventListener('click', (e) => {
    if (fired) {
      fired = false;
      e.preventDefault();
      e.stopPropagation();
    }
  }, true);
}
