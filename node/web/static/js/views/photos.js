// Profile and group photos: choosing a picture, cropping it to a square (drag to move, the
// slider, the wheel or the arrow keys to zoom), and sending a 512×512 JPEG made in a canvas.
// What the node stores is that square; lists show its thumbnail.

import { $ } from '../dom.js';

const OUTPUT = 512; // px: the side of the square sent
const MAX_ZOOM = 4;

export class PhotoCropper {
  constructor() {
    this.dialog = $('#photo-dialog');
    this.canvas = $('#photo-canvas');
    this.zoomInput = $('#photo-zoom');
    this.image = null;
    this.zoom = 1;
    this.x = 0; // the crop's centre, in image pixels
    this.y = 0;
    this.drag = null;
    this.canvas.addEventListener('pointerdown', (e) => {
      this.drag = { x: e.clientX, y: e.clientY, cx: this.x, cy: this.y };
      this.canvas.setPointerCapture(e.pointerId);
    });
    this.canvas.addEventListener('pointermove', (e) => {
      if (!this.drag) return;
      const scale = this.scale();
      this.x = this.drag.cx - (e.clientX - this.drag.x) / scale;
      this.y = this.drag.cy - (e.clientY - this.drag.y) / scale;
      this.draw();
    });
    this.canvas.addEventListener('pointerup', () => { this.drag = null; });
    this.canvas.addEventListener('wheel', (e) => {
      e.preventDefault();
      this.setZoom(this.zoom * (e.deltaY < 0 ? 1.1 : 1 / 1.1));
    }, { passive: false });
    this.canvas.addEventListener('keydown', (e) => {
      const step = 20 / this.scale();
      const moves = { ArrowLeft: [-step, 0], ArrowRight: [step, 0], ArrowUp: [0, -step], ArrowDown: [0, step] };
      if (moves[e.key]) {
        e.preventDefault();
        this.x += moves[e.key][0];
        this.y += moves[e.key][1];
        this.draw();
      } else if (e.key === '+' || e.key === '=') this.setZoom(this.zoom * 1.1);
      else if (e.key === '-') this.setZoom(this.zoom / 1.1);
    });
    this.zoomInput.addEventListener('input', () => this.setZoom(Number(this.zoomInput.value)));
  }

  /** Canvas pixels per image pixel: at zoom 1 the shorter side fills the square. */
  scale() {
    const side = this.canvas.width;
    return (side / Math.min(this.image.naturalWidth, this.image.naturalHeight)) * this.zoom;
  }

  setZoom(zoom) {
    this.zoom = Math.min(MAX_ZOOM, Math.max(1, zoom));
    this.zoomInput.value = String(this.zoom);
    this.draw();
  }

  /** Keep the square inside the picture, then paint what it holds. */
  draw() {
    if (!this.image) return;
    const ctx = this.canvas.getContext('2d');
    const side = this.canvas.width;
    const scale = this.scale();
    const half = side / scale / 2;
    this.x = Math.min(this.image.naturalWidth - half, Math.max(half, this.x));
    this.y = Math.min(this.image.naturalHeight - half, Math.max(half, this.y));
    ctx.fillStyle = '#000';
    ctx.fillRect(0, 0, side, side);
    ctx.drawImage(this.image, this.x - half, this.y - half, half * 2, half * 2, 0, 0, side, side);
  }

  /** Resolves to a square JPEG File of `file`, cropped by the user, or null if cancelled. */
  async crop(file, title) {
    const url = URL.createObjectURL(file);
    try {
      this.image = await loadImage(url);
    } catch (err) {
      URL.revokeObjectURL(url);
      throw new Error('unreadable');
    }
    $('#photo-title').textContent = title;
    this.zoom = 1;
    this.zoomInput.value = '1';
    this.x = this.image.naturalWidth / 2;
    this.y = this.image.naturalHeight / 2;
    this.draw();
    this.dialog.returnValue = '';
    this.dialog.showModal();
    this.canvas.focus();
    const chosen = await new Promise((resolve) => {
      this.dialog.addEventListener('close', () => resolve(this.dialog.returnValue === 'ok'), { once: true });
    });
    try {
      if (!chosen) return null;
      const out = document.createElement('canvas');
      out.width = OUTPUT;
      out.height = OUTPUT;
      const half = this.canvas.width / this.scale() / 2;
      out.getContext('2d').drawImage(this.image, this.x - half, this.y - half, half * 2, half * 2, 0, 0, OUTPUT, OUTPUT);
      const blob = await new Promise((resolve) => { out.toBlob(resolve, 'image/jpeg', 0.9); });
      return new File([blob], 'profile-photo.jpg', { type: 'image/jpeg' });
    } finally {
      URL.revokeObjectURL(url);
      this.image = null;
    }
  }
}

function loadImage(url) {
  return new Promise((resolve, reject) => {
    const img = new Image();
    img.onload = () => resolve(img);
    img.onerror = reject;
    img.src = url;
  });
}

/** A picture that cannot be used, with the sentence that says why. */
export class PhotoProblem extends Error {
  constructor(sentence) {
    super(sentence);
    this.sentence = sentence;
  }
}

/**
 * Choose a picture and crop it: resolves to the square File, or null if the user gave up;
 * throws a PhotoProblem if the file is not a picture the browser can open.
 */
export async function pickPhoto(cropper, title) {
  const file = await choosePicture();
  if (!file) return null;
  if (!(file.type || '').startsWith('image/')) throw new PhotoProblem(`“${file.name}” is not a picture.`);
  try {
    return await cropper.crop(file, title);
  } catch (err) {
    throw new PhotoProblem(`“${file.name}” can’t be opened as a picture.`);
  }
}

/** Ask for a picture: resolves to the File chosen, or null. */
export function choosePicture() {
  return new Promise((resolve) => {
    const input = $('#photo-input');
    input.value = '';
    const onChange = () => {
      input.removeEventListener('change', onChange);
      resolve(input.files && input.files[0] ? input.files[0] : null);
    };
    input.addEventListener('change', onChange);
    input.click();
  });
}
