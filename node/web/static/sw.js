// The service worker of the web client, served at /sw.js so that its scope is the whole
// client. It is there for Web Push (docs/push.md): it shows a notification for a push
// message while no tab of the client is visible, and a click on a notification focuses a
// tab of the client (or opens one) on that chat. It caches nothing and handles no fetch.
//
// A push says, by default, only which chat and sender and how many messages (no text: the
// push service must not read them), so the notification says "New message" or "3 new
// messages"; with the node's `previews` on it names the sender and quotes the text.

'use strict';

const KIND_LABELS = { image: 'Photo', video: 'Video', audio: 'Audio', file: 'File' };

self.addEventListener('install', () => self.skipWaiting()); // a new version takes over at once
self.addEventListener('activate', (event) => event.waitUntil(self.clients.claim()));

// One push at a time: each reads the notification the one before it left (a browser back
// online gets what its push service kept all at once).
let pushes = Promise.resolve();
self.addEventListener('push', (event) => {
  const handled = pushes.then(() => onPush(event));
  pushes = handled.catch(() => {});
  event.waitUntil(handled);
});
self.addEventListener('notificationclick', (event) => event.waitUntil(onClick(event)));

/** The tabs of the client, controlled by this worker or not (a tab opened before it was). */
function windows() {
  return self.clients.matchAll({ type: 'window', includeUncontrolled: true });
}

function chatIdOf(value) {
  const id = value === undefined || value === null ? '' : String(value);
  return /^\d+$/.test(id) ? id : null;
}

function readPayload(event) {
  if (!event.data) return {};
  try {
    const data = event.data.json();
    return data && typeof data === 'object' ? data : {};
  } catch (err) {
    return {};
  }
}

async function onPush(event) {
  const data = readPayload(event);
  const chat = chatIdOf(data.chat);
  const tabs = await windows();
  if (tabs.some((tab) => tab.visibilityState === 'visible')) {
    // Someone is looking at the client, which gets the message over its own connection:
    // a notification would only repeat it.
    for (const tab of tabs) tab.postMessage({ type: 'push', chat });
    return;
  }
  // A chat has one notification, replaced by each push and counting the messages it stands
  // for until it is closed (opening the chat in a tab closes it).
  const tag = chat || 'chatnode';
  const earlier = await self.registration.getNotifications({ tag });
  const count = Math.max(1, Number(data.count) || 1)
    + earlier.reduce((sum, n) => sum + ((n.data && n.data.count) || 1), 0);
  const { title, body } = wording(data, count);
  await self.registration.showNotification(title, {
    body,
    tag,
    renotify: true,
    timestamp: Number(data.ts) || Date.now(),
    data: { chat, count },
  });
}

/** Title and body of a notification for `count` messages of a push payload. */
function wording(data, count) {
  const node = typeof data.node === 'string' && data.node ? data.node : 'chatnode';
  const many = `${count} new messages`;
  const emoji = data.type === 'reaction' && typeof data.emoji === 'string' ? data.emoji.slice(0, 16) : '';
  if (typeof data.sender_name !== 'string' || !data.sender_name) {
    if (emoji && count === 1) return { title: node, body: `Someone reacted ${emoji} to your message` };
    return { title: node, body: count > 1 ? many : 'New message' }; // no previews: ids only
  }
  if (emoji && count === 1) {
    const quoted = typeof data.text === 'string' && data.text ? `: “${data.text}”` : '';
    return { title: data.sender_name, body: `Reacted ${emoji} to your message${quoted}` };
  }
  const label = KIND_LABELS[data.kind];
  const text = typeof data.text === 'string' ? data.text : '';
  const latest = label && text ? `${label}: ${text}` : text || label || 'New message';
  return { title: data.sender_name, body: count > 1 ? `${many}. Latest: ${latest}` : latest };
}

async function onClick(event) {
  const notification = event.notification;
  notification.close();
  const chat = chatIdOf(notification.data && notification.data.chat);
  const tabs = await windows();
  const tab = tabs.find((t) => t.focused) || tabs.find((t) => t.visibilityState === 'visible') || tabs[0];
  if (tab) {
    try {
      await tab.focus();
    } catch (err) { /* the browser may refuse; the chat still opens */ }
    if (chat) tab.postMessage({ type: 'open-chat', chat });
    return;
  }
  await self.clients.openWindow(chat ? `/#chat=${chat}` : '/');
}
