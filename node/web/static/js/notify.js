// Browser notifications for messages that arrive while the tab is hidden. Permission is
// asked only from a click (the banner's button or the switch in Settings), never on load.
// A page cannot give a permission back, so "off" in Settings is a flag kept here. Turning
// them on also subscribes this browser to Web Push (push.js), for messages that arrive
// while no tab is open; off unsubscribes.

import { startPush, stopPush, workerRegistration } from './push.js';

const DISMISSED = 'chatnode.notifications.dismissed';
const OFF = 'chatnode.notifications.off';
const OFFERED = 'chatnode.notifications.offered';
const MAX_OFFERS = 3; // page loads the banner shows on without an answer; then only Settings offers

/** Seconds the banner stays before it goes away by itself (it comes back at a later load). */
export const OFFER_SECONDS = 15;

export function notificationsSupported() {
  return 'Notification' in window;
}

/** Whether to show the banner offering notifications. */
export function shouldOffer() {
  return notificationsSupported() && Notification.permission === 'default' && !localStorage.getItem(DISMISSED)
    && Number(localStorage.getItem(OFFERED) || 0) < MAX_OFFERS;
}

/** The banner was shown once more without an answer. */
export function noteOffered() {
  localStorage.setItem(OFFERED, String(Number(localStorage.getItem(OFFERED) || 0) + 1));
}

export function dismissOffer() {
  localStorage.setItem(DISMISSED, '1');
}

/** Whether notifications will be shown: allowed by the browser and not turned off here. */
export function notificationsOn() {
  return notificationsSupported() && Notification.permission === 'granted' && !localStorage.getItem(OFF);
}

/**
 * Turn notifications on (asking the browser if it has not been asked) or off; resolves to
 * the new state. Background (Web Push) notifications follow through `api` without being
 * waited for: their outcome is pushState() of push.js.
 */
export async function setNotifications(on, api) {
  if (!on) {
    localStorage.setItem(OFF, '1');
    dismissOffer(); // a choice was made: the banner need not ask again
    stopPush(api);
    return false;
  }
  localStorage.removeItem(OFF);
  if (notificationsSupported() && Notification.permission === 'default') await requestPermission();
  const allowed = notificationsOn();
  if (allowed) startPush(api);
  return allowed;
}

export async function requestPermission() {
  if (!notificationsSupported()) return 'denied';
  try {
    return await Notification.requestPermission();
  } catch (err) {
    return 'denied';
  }
}

/** Show a notification if the tab is hidden and we may; clicking it opens the chat. */
export function notify({ title, body, tag, icon, onClick }) {
  if (!notificationsOn() || document.visibilityState === 'visible') return null;
  try {
    const notification = new Notification(title, { body, tag, icon, renotify: true });
    notification.onclick = () => {
      window.focus();
      notification.close();
      if (onClick) onClick();
    };
    return notification;
  } catch (err) {
    // Some browsers (Chrome on Android) show notifications only from a service worker;
    // a click on one goes to sw.js, which asks this tab to open the chat.
    workerRegistration().then((registration) => {
      if (registration) registration.showNotification(title, { body, tag, icon, renotify: true, data: { chat: tag } });
    }).catch(() => {});
    return null;
  }
}

/** Close the notifications of a chat (the user is reading it), those of sw.js included. */
export async function closeNotifications(chatId) {
  const registration = await workerRegistration();
  if (!registration || !chatId) return;
  try {
    for (const notification of await registration.getNotifications({ tag: String(chatId) })) notification.close();
  } catch (err) { /* nothing to close */ }
}
