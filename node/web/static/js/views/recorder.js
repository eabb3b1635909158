// Voice messages: the microphone button records with MediaRecorder (Opus in WebM on
// Chromium, in Ogg on Firefox, MP4 on Safari). Hold it and let go to send (slide left
// to cancel), or click it (or Enter/Space) to record hands-free, then Send or Cancel.
// While recording: a timer and a live waveform. The recording is sent like any other
// audio file: an upload, then an `audio` message.

import { $ } from '../dom.js';
import { duration as clock } from '../format.js';

const TYPES = ['audio/webm;codecs=opus', 'audio/ogg;codecs=opus', 'audio/webm', 'audio/mp4'];
const HOLD = 400; // ms: a press longer than this is a hold (release sends)
const SLIDE_CANCEL = 80; // px to the left that cancels a hold
const MIN_SECONDS = 0.5; // shorter recordings are dropped (a mistaken tap on hold mode)
const BARS = 48; // waveform bars shown

export function recordingSupported() {
  return Boolean(window.MediaRecorder && navigator.mediaDevices && navigator.mediaDevices.getUserMedia);
}

export class VoiceRecorder {
  /** `onRecorded(file)`: a finished recording to send; `onError(text)`: a sentence to show. */
  constructor({ onRecorded, onError }) {
    this.onRecorded = onRecorded;
    this.onError = onError;
    this.form = $('#compose-form');
    this.button = $('#record');
    this.bar = $('#recording');
    this.time = $('#record-time');
    this.canvas = $('#record-wave');
    this.state = 'idle'; // idle | starting | recording
    this.mode = null; // 'hold' | 'tap'
    this.levels = [];
    this.button.hidden = !recordingSupported();
    this.wire();
  }

  wire() {
    const button = this.button;
    button.addEventListener('pointerdown', (e) => {
      if (e.button !== 0 || this.state !== 'idle') return;
      e.preventDefault();
      button.setPointerCapture(e.pointerId);
      this.press = { at: Date.now(), x: e.clientX, cancel: false };
      this.start('hold');
    });
    button.addEventListener('pointermove', (e) => {
      if (!this.press) return;
      this.press.cancel = e.clientX - this.press.x < -SLIDE_CANCEL;
      this.bar.classList.toggle('will-cancel', this.press.cancel);
    });
    button.addEventListener('pointerup', () => {
      const press = this.press;
      this.press = null;
      if (!press) return;
      this.bar.classList.remove('will-cancel');
      this.suppressClick = true; // the click that follows this press is not a new start
      setTimeout(() => { this.suppressClick = false; });
      if (press.cancel) this.cancel();
      else if (Date.now() - press.at >= HOLD) this.finish();
      else if (this.active) { // a tap: go on until Send or Cancel
        this.mode = 'tap';
        this.render();
      }
    });
    button.addEventListener('contextmenu', (e) => e.preventDefault()); // a long press on a phone
    button.addEventListener('pointercancel', () => {
      if (this.press) this.cancel();
      this.press = null;
    });
    button.addEventListener('click', () => { // the keyboard, or a click that pointer events did not see
      if (this.suppressClick) {
        this.suppressClick = false;
        return;
      }
      if (this.state === 'idle') this.start('tap');
    });
    $('#record-cancel').addEventListener('click', () => this.cancel());
    $('#record-send').addEventListener('click', () => this.finish());
    this.bar.addEventListener('keydown', (e) => {
      if (e.key === 'Escape') {
        e.preventDefault();
        this.cancel();
      }
    });
  }

  get active() {
    return this.state !== 'idle';
  }

  async start(mode) {
    this.state = 'starting';
    this.mode = mode;
    this.discard = false;
    this.chunks = [];
    this.levels = [];
    this.time.textContent = '0:00';
    this.render();
    let stream;
    try {
      stream = await navigator.mediaDevices.getUserMedia({ audio: true });
    } catch (err) {
      this.reset();
      this.onError(err.name === 'NotAllowedError' || err.name === 'SecurityError'
        ? 'Microphone access is blocked. Allow it in the browser’s settings for this site to record voice messages.'
        : err.name === 'NotFoundError' ? 'No microphone was found. Connect one to record voice messages.'
          : 'The microphone could not be started. Is another app using it?');
      return;
    }
    if (this.state !== 'starting') { // cancelled while the browser asked
      stream.getTracks().forEach((track) => track.stop());
      return;
    }
    this.stream = stream;
    const mimeType = TYPES.find((type) => MediaRecorder.isTypeSupported(type));
    this.recorder = new MediaRecorder(stream, mimeType ? { mimeType, audioBitsPerSecond: 32000 } : undefined);
    this.recorder.addEventListener('dataavailable', (e) => { if (e.data.size) this.chunks.push(e.data); });
    this.recorder.addEventListener('stop', () => this.stopped());
    this.recorder.start(1000);
    this.startedAt = performance.now();
    this.state = 'recording';
    this.watch(stream);
    this.tick();
  }

  /** The waveform: the level of the sound, a bar every 100 ms. */
  watch(stream) {
    try {
      this.audioContext = new AudioContext();
      const source = this.audioContext.createMediaStreamSource(stream);
      this.analyser = this.audioContext.createAnalyser();
      this.analyser.fftSize = 1024;
      source.connect(this.analyser);
    } catch (err) {
      this.analyser = null; // no waveform; the timer still runs
    }
  }

  tick() {
    if (this.state !== 'recording') return;
    const seconds = (performance.now() - this.startedAt) / 1000;
    this.time.textContent = clock(Math.floor(seconds));
    if (this.analyser) {
      const samples = new Uint8Array(this.analyser.fftSize);
      this.analyser.getByteTimeDomainData(samples);
      let sum = 0;
      for (const value of samples) sum += ((value - 128) / 128) ** 2;
      const level = Math.min(1, Math.sqrt(sum / samples.length) * 4);
      if (seconds * 10 > this.levels.length) this.levels.push(level);
      this.draw();
    }
    this.timer = setTimeout(() => this.tick(), 100);
  }

  draw() {
    const canvas = this.canvas;
    const ratio = window.devicePixelRatio || 1;
    const width = canvas.clientWidth * ratio;
    const height = canvas.clientHeight * ratio;
    if (!width || !height) return;
    if (canvas.width !== width || canvas.height !== height) Object.assign(canvas, { width, height });
    const ctx = canvas.getContext('2d');
    ctx.clearRect(0, 0, width, height);
    ctx.fillStyle = getComputedStyle(canvas).color;
    const shown = this.levels.slice(-BARS);
    const step = width / BARS;
    shown.forEach((level, i) => {
      const bar = Math.max(2 * ratio, level * height);
      ctx.fillRect(i * step + step * 0.2, (height - bar) / 2, step * 0.6, bar);
    });
    canvas.dataset.bars = String(this.levels.length);
  }

  /** Stop and send. */
  finish() {
    if (this.state === 'starting') {
      this.cancel();
      return;
    }
    if (this.state !== 'recording') return;
    this.seconds = (performance.now() - this.startedAt) / 1000;
    this.recorder.stop(); // `stopped` follows, with the last data
  }

  cancel() {
    if (this.state === 'recording') {
      this.discard = true;
      this.recorder.stop();
    } else {
      this.reset();
    }
  }

  stopped() {
    const { chunks, discard, seconds } = this;
    const type = (this.recorder.mimeType || 'audio/webm').split(';')[0];
    this.reset();
    if (discard) return;
    if (!(seconds >= MIN_SECONDS)) {
      this.onError('Too short to send. Hold the microphone button while you speak, or click it to start and stop.');
      return;
    }
    const extension = { 'audio/ogg': 'ogg', 'audio/mp4': 'm4a' }[type] || 'webm';
    const stamp = new Date().toISOString().slice(0, 19).replace(/[-:]/g, '').replace('T', '-');
    this.onRecorded(new File(chunks, `voice-note-${stamp}.${extension}`, { type }));
  }

  reset() {
    clearTimeout(this.timer);
    if (this.stream) this.stream.getTracks().forEach((track) => track.stop());
    if (this.audioContext) this.audioContext.close().catch(() => {});
    this.stream = this.recorder = this.audioContext = this.analyser = null;
    this.state = 'idle';
    this.mode = null;
    this.canvas.getContext('2d')?.clearRect(0, 0, this.canvas.width, this.canvas.height);
    delete this.canvas.dataset.bars;
    this.render();
  }

  /** The composer shows the recording bar instead of the text (data-recording: hold | tap). */
  render() {
    const on = this.state !== 'idle';
    const hadFocus = this.form.contains(document.activeElement);
    this.bar.hidden = !on;
    this.form.dataset.recording = on ? this.mode : '';
    this.button.setAttribute('aria-pressed', String(on));
    $('#record-hint').hidden = this.mode !== 'hold';
    if (on && this.mode === 'tap') $('#record-send').focus({ preventScroll: true });
    else if (!on && hadFocus) $('#compose-text').focus({ preventScroll: true });
  }
}
