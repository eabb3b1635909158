// How entries read as text: previews, notifications, system notes, avatars.

import { h } from '../dom.js';
import { ttlLabel } from '../format.js';
import { describeMedia } from '../media.js';
import { plainText } from './richtext.js';

export function systemText(store, entry) {
  const by = entry.by ? store.nameOf(entry.by) : null;
  const users = entry.users || [];
  const names = users.map((id) => store.nameOf(id)).join(', '); // as the subject: "You left"
  const mine = (id) => store.me && id === store.me.id;
  const objects = users.map((id) => (mine(id) ? 'you' : store.nameOf(id))).join(', '); // "Alice added you"
  const me = users.length === 1 && mine(users[0]);
  switch (entry.event) {
    case 'created': return `${by} created the group “${entry.title}”`;
    case 'added': return `${by} added ${objects}`;
    case 'removed': return `${by} removed ${objects}`;
    case 'left': return `${names} left`;
    case 'promoted': return by ? `${by} made ${objects} an admin` : `${names} ${me ? 'are' : 'is'} now an admin`;
    case 'demoted': return `${by} made ${objects} a member`;
    case 'renamed': return `${by} renamed the group to “${entry.title}”`;
    case 'ttl_changed':
      return entry.ttl ? `${by} turned on disappearing messages: ${ttlLabel(entry.ttl)}` : `${by} turned off disappearing messages`;
    case 'photo_changed': return `${by} changed the group photo`;
    case 'photo_removed': return `${by} removed the group photo`;
    default: return entry.event || 'The chat changed';
  }
}

/** One line of text for an entry (chat list preview, notification, reply quote). */
export function entryText(store, entry) {
  if (!entry) return '';
  switch (entry.kind) {
    case 'text': return plainText(entry.text || '');
    case 'image': case 'video': case 'audio': case 'file': {
      const voice = entry.kind === 'audio' && entry.media && /^voice-note/.test(entry.media.name || '');
      const label = entry.kind === 'file' && entry.media && entry.media.name ? entry.media.name
        : voice ? 'Voice message' : describeMedia(entry.kind);
      return entry.text ? `${label}: ${plainText(entry.text)}` : label;
    }
    case 'deleted': return entry.from === store.me.id ? 'You deleted this message' : 'This message was deleted';
    case 'system': return systemText(store, entry);
    default: return '';
  }
}

function hue(id) {
  let n = 0;
  for (const ch of String(id)) n = (n * 31 + ch.charCodeAt(0)) % 997;
  return n % 8;
}

export function initials(name) {
  const words = String(name || '?').trim().split(/[\s._-]+/).filter(Boolean);
  return (words.length > 1 ? words[0][0] + words[1][0] : (words[0] || '?')[0]).toUpperCase();
}

let photoSource = null; // media id -> Promise of the URL of its thumbnail (set by app.js)

/** How avatars find a photo's picture (signed URLs need the session). */
export function setPhotoSource(source) {
  photoSource = source;
}

/**
 * Fill an avatar element (or make one) for a title and id: the photo (a media id) when there
 * is one, else the initials on a colour of the id (also while the photo loads, or if it cannot).
 */
export function avatar(name, id, el = null, photo = null) {
  const node = el || h('span', { class: 'avatar', 'aria-hidden': 'true' });
  node.className = `avatar hue-${hue(id)}`;
  if (!photo || !photoSource) {
    delete node.dataset.photo;
    node.textContent = initials(name);
    return node;
  }
  node.classList.add('has-photo');
  if (node.dataset.photo === photo && node.querySelector('img')) return node; // already shown
  node.dataset.photo = photo;
  node.textContent = initials(name);
  photoSource(photo).then((url) => {
    if (node.dataset.photo !== photo) return; // changed meanwhile
    const img = h('img', { class: 'avatar-img', alt: '', decoding: 'async', draggable: 'false' });
    img.addEventListener('load', () => {
      if (node.dataset.photo === photo) node.replaceChildren(img);
    }, { once: true });
    img.addEventListener('error', () => node.classList.remove('has-photo'), { once: true });
    img.src = url;
  }).catch(() => node.classList.remove('has-photo'));
  return node;
}

/** The id an avatar's colour follows: the person for a 1-1 chat, else the chat. */
export function chatAvatarId(chat) {
  return chat.kind === 'direct' && chat.peer ? chat.peer.id : chat.id;
}

/** A chat's photo: the person's for a 1-1 chat, else the group's (a media id, or null). */
export function chatPhoto(chat) {
  if (!chat) return null;
  return (chat.kind === 'direct' ? chat.peer && chat.peer.photo : chat.photo) || null;
}

export function chatTitle(chat) {
  if (chat.kind === 'direct') return chat.peer ? chat.peer.display_name || chat.peer.username : chat.title || 'Unknown';
  return chat.title || 'Group';
}
