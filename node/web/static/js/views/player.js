// An inline audio player for voice notes and other audio: play/pause, a seek bar, the time,
// and the speed (1×, 1.5×, 2×). One plays at a time. A browser's recording (WebM) often
// has no duration in its header, so the node's (media.duration) is used until the
// <audio> element knows better.

import { h, icon } from '../dom.js';
import { duration as clock } from '../format.js';

const SPEEDS = [1, 1.5, 2];
let playing = null; // the <audio> element playing now

/** The player for an audio message; `src` is a promise of the URL. */
export function audioPlayer(media, label, src) {
  const audio = h('audio', { preload: 'metadata' });
  const play = h('button', { type: 'button', class: 'icon-button play', 'aria-label': `Play ${label}`, title: 'Play' }, icon('play'));
  const seek = h('input', {
    type: 'range', class: 'seek', min: '0', max: '1', step: '0.01', value: '0', disabled: true,
    'aria-label': `Position in ${label}`,
  });
  const time = h('span', { class: 'player-time' }, media.duration ? clock(media.duration) : '0:00');
  const speed = h('button', { type: 'button', class: 'speed', 'aria-label': 'Playback speed 1×', title: 'Playback speed' }, '1×');
  const box = h('div', { class: 'player', role: 'group', 'aria-label': label }, play, seek, time, speed, audio);

  const total = () => (Number.isFinite(audio.duration) && audio.duration > 0 ? audio.duration : media.duration || 0);
  const show = () => {
    const length = total();
    seek.max = String(length || 1);
    seek.disabled = !length;
    if (!seek.matches(':active')) seek.value = String(Math.min(audio.currentTime, length || 0));
    const shown = audio.paused && !audio.currentTime ? length : audio.currentTime;
    time.textContent = clock(shown || 0);
    seek.setAttribute('aria-valuetext', `${clock(audio.currentTime)} of ${clock(length)}`);
  };
  const setPlaying = (on) => {
    play.replaceChildren(icon(on ? 'pause' : 'play'));
    play.setAttribute('aria-label', `${on ? 'Pause' : 'Play'} ${label}`);
    play.title = on ? 'Pause' : 'Play';
    box.classList.toggle('is-playing', on);
  };

  play.addEventListener('click', () => {
    if (audio.paused) {
      if (playing && playing !== audio) playing.pause();
      audio.play().catch(() => box.classList.add('broken'));
    } else {
      audio.pause();
    }
  });
  seek.addEventListener('input', () => {
    audio.currentTime = Number(seek.value);
    show();
  });
  speed.addEventListener('click', () => {
    const next = SPEEDS[(SPEEDS.indexOf(audio.playbackRate) + 1) % SPEEDS.length];
    audio.playbackRate = next;
    audio.defaultPlaybackRate = next;
    speed.textContent = `${next}×`;
    speed.setAttribute('aria-label', `Playback speed ${next}×`);
  });
  audio.addEventListener('play', () => {
    playing = audio;
    setPlaying(true);
  });
  audio.addEventListener('pause', () => {
    if (playing === audio) playing = null;
    setPlaying(false);
    show();
  });
  audio.addEventListener('ended', () => {
    audio.currentTime = 0;
    show();
  });
  for (const event of ['loadedmetadata', 'durationchange', 'timeupdate', 'seeked']) audio.addEventListener(event, show);
  audio.addEventListener('error', () => box.classList.add('broken'));

  src.then((url) => {
    audio.src = url;
    show();
  }).catch(() => box.classList.add('broken'));
  show();
  return box;
}
