// The photo viewer: the chat's photos, one at a time, centred and fitted to the screen.
// Zoom with the buttons, the wheel, a click (or double tap), or two fingers; drag to look
// around a zoomed photo. The arrow buttons, ArrowLeft/ArrowRight or a swipe move between
// the chat's photos. Download saves the photo; Escape or Close leaves.

import { $ } from '../dom.js';
import { time, dayLabel } from '../format.js';
import { signedUrls } from '../media.js';

const MAX_ZOOM = 5;
const STEP = 1.5;
const SWIPE = 60; // px of horizontal travel that turns the page

export class PhotoViewer {
  constructor(store, api) {
    this.store = store;
    this.api = api;
    this.dialog = $('#viewer-dialog');
    this.stage = $('#viewer-stage');
    this.image = $('#viewer-image');
    this.photos = []; // entries
    this.index = 0;
    this.zoom = 1;
    this.pan = { x: 0, y: 0 };
    this.pointers = new Map(); // pointer id -> {x, y}
    this.gesture = null;
    this.wire();
  }

  wire() {
    $('#viewer-prev').addEventListener('click', () => this.go(-1));
    $('#viewer-next').addEventListener('click', () => this.go(1));
    $('#viewer-zoom-in').addEventListener('click', () => this.setZoom(this.zoom * STEP));
    $('#viewer-zoom-out').addEventListener('click', () => this.setZoom(this.zoom / STEP));
    document.addEventListener('keydown', (e) => { // (a click on the photo leaves the focus on the body)
      if (!this.dialog.open || e.altKey || e.ctrlKey || e.metaKey) return;
      if (e.key === 'ArrowLeft' || e.key === 'ArrowRight') {
        e.preventDefault();
        this.go(e.key === 'ArrowLeft' ? -1 : 1);
      } else if (e.key === '+' || e.key === '=') {
        this.setZoom(this.zoom * STEP);
      } else if (e.key === '-') {
        this.setZoom(this.zoom / STEP);
      }
    });
    this.dialog.addEventListener('close', () => {
      this.image.removeAttribute('src');
      this.photos = [];
    });
    this.stage.addEventListener('wheel', (e) => {
      e.preventDefault();
      this.setZoom(this.zoom * (e.deltaY < 0 ? 1.2 : 1 / 1.2), e);
    }, { passive: false });
    this.stage.addEventListener('pointerdown', (e) => this.onDown(e));
    this.stage.addEventListener('pointermove', (e) => this.onMove(e));
    for (const type of ['pointerup', 'pointercancel']) this.stage.addEventListener(type, (e) => this.onUp(e));
    this.stage.addEventListener('dblclick', (e) => { // a double tap (a mouse zooms with one click)
      if (this.lastPointer !== 'mouse') this.setZoom(this.zoom > 1 ? 1 : 2.5, e);
    });
    this.image.addEventListener('load', () => this.dialog.classList.remove('loading'));
  }

  /** Open `entry`'s photo, with the other photos of its chat to move through. */
  open(chatId, entry) {
    const photos = this.store.visibleEntries(chatId, Date.now()).filter((e) => e.kind === 'image' && e.media && e.media.id);
    const index = photos.findIndex((e) => e.seq === entry.seq);
    this.photos = index === -1 ? [entry] : photos;
    this.index = Math.max(0, index);
    if (!this.dialog.open) this.dialog.showModal();
    this.show();
    $('#viewer-close').focus();
  }

  go(step) {
    const next = this.index + step;
    if (next < 0 || next >= this.photos.length) return;
    this.index = next;
    this.show();
  }

  show() {
    const entry = this.photos[this.index];
    if (!entry) return;
    this.setZoom(1);
    const many = this.photos.length > 1;
    $('#viewer-count').textContent = many ? `${this.index + 1} of ${this.photos.length}` : '';
    $('#viewer-prev').disabled = this.index === 0;
    $('#viewer-next').disabled = this.index === this.photos.length - 1;
    $('#viewer-prev').hidden = $('#viewer-next').hidden = !many;
    const who = this.store.nameOf(entry.from);
    $('#viewer-caption').textContent = `${who}, ${dayLabel(entry.ts)} ${time(entry.ts)}${entry.text ? ` · ${entry.text}` : ''}`;
    this.image.alt = entry.text ? `Photo: ${entry.text}` : `Photo from ${who}`;
    const download = $('#viewer-download');
    download.removeAttribute('href');
    download.download = entry.media.name || `photo-${entry.seq || 'new'}.${(entry.media.mime || 'image/jpeg').split('/')[1]}`;
    this.dialog.classList.add('loading');
    const shown = entry;
    signedUrls(this.api, entry.media.id).then((signed) => {
      if (this.photos[this.index] !== shown) return;
      this.image.src = signed.url;
      download.href = signed.url;
    }).catch(() => this.dialog.classList.remove('loading'));
  }

  // -- zoom and pan ---------------------------------------------------------------------

  /** Zoom to `zoom` (1 = fitted), keeping the point under `at` (an event) in place. */
  setZoom(zoom, at = null) {
    const next = Math.min(MAX_ZOOM, Math.max(1, zoom));
    if (at && next !== this.zoom) {
      const box = this.stage.getBoundingClientRect();
      const dx = at.clientX - (box.left + box.width / 2);
      const dy = at.clientY - (box.top + box.height / 2);
      const ratio = next / this.zoom;
      this.pan.x = dx - (dx - this.pan.x) * ratio;
      this.pan.y = dy - (dy - this.pan.y) * ratio;
    }
    this.zoom = next;
    if (next === 1) this.pan = { x: 0, y: 0 };
    this.apply();
  }

  apply() {
    this.image.style.transform = this.zoom === 1 ? '' : `translate(${this.pan.x}px, ${this.pan.y}px) scale(${this.zoom})`;
    this.dialog.classList.toggle('zoomed', this.zoom > 1);
    $('#viewer-zoom-out').disabled = this.zoom <= 1;
    $('#viewer-zoom-in').disabled = this.zoom >= MAX_ZOOM;
  }

  onDown(e) {
    if (e.target.closest('button, a')) return;
    this.lastPointer = e.pointerType;
    this.stage.setPointerCapture(e.pointerId);
    this.pointers.set(e.pointerId, { x: e.clientX, y: e.clientY });
    if (this.pointers.size === 2) {
      const [a, b] = [...this.pointers.values()];
      this.gesture = { type: 'pinch', distance: Math.hypot(a.x - b.x, a.y - b.y), zoom: this.zoom };
    } else {
      this.gesture = { type: 'drag', x: e.clientX, y: e.clientY, pan: { ...this.pan }, moved: 0, onImage: e.target === this.image };
    }
  }

  onMove(e) {
    if (!this.pointers.has(e.pointerId) || !this.gesture) return;
    this.pointers.set(e.pointerId, { x: e.clientX, y: e.clientY });
    if (this.gesture.type === 'pinch' && this.pointers.size === 2) {
      const [a, b] = [...this.pointers.values()];
      const centre = { clientX: (a.x + b.x) / 2, clientY: (a.y + b.y) / 2 };
      this.setZoom(this.gesture.zoom * (Math.hypot(a.x - b.x, a.y - b.y) / this.gesture.distance), centre);
    } else if (this.gesture.type === 'drag') {
      const dx = e.clientX - this.gesture.x;
      const dy = e.clientY - this.gesture.y;
      this.gesture.moved = Math.max(this.gesture.moved, Math.hypot(dx, dy));
      if (this.zoom > 1) {
        this.pan = { x: this.gesture.pan.x + dx, y: this.gesture.pan.y + dy };
        this.apply();
      }
    }
  }

  onUp(e) {
    if (!this.pointers.delete(e.pointerId)) return;
    const gesture = this.gesture;
    if (this.pointers.size) return; // one finger of a pinch lifted: wait for the other
    this.gesture = null;
    if (!gesture || gesture.type !== 'drag' || e.type === 'pointercancel') return;
    const dx = e.clientX - gesture.x;
    const dy = e.clientY - gesture.y;
    if (this.zoom === 1 && Math.abs(dx) > SWIPE && Math.abs(dx) > 2 * Math.abs(dy)) {
      this.go(dx < 0 ? 1 : -1); // swipe left: the next photo
    } else if (gesture.moved < 6 && e.pointerType === 'mouse' && gesture.onImage) {
      this.setZoom(this.zoom > 1 ? 1 : 2.5, e); // a click on the photo zooms in and out
    }
  }
}
