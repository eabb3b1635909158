// Browser notifications for messages that arrive while the tab is hidden. Permission is
// asked only from a click (the banner's button or the switch in Settings), never on load.
// A page cannot give a permission back, so "off" in Settings is a flag kept here.

const DISMISSED = 'chatnode.notifications.dismissed';
const OFF = 'chatnode.notifications.off';

export function notificationsSupported() {
  return 'Notification' in window;
}

/** Whether to show the banner offering notifications. */
export function shouldOffer() {
  return notificationsSupported() && Notification.permission === 'default' && !localStorage.getItem(DISMISSED);
}

export function dismissOffer() {
  localStorage.setItem(DISMISSED, '1');
}

/** Whether notifications will be shown: allowed by the browser and not turned off here. */
export function notificationsOn() {
  return notificationsSupported() && Notification.permission === 'granted' && !localStorage.getItem(OFF);
}

/** Turn notifications on (asking the browser if it has not been asked) or off; resolves to the new state. */
export async function setNotifications(on) {
  if (!on) {
    localStorage.setItem(OFF, '1');
    dismissOffer(); // a choice was made: the banner need not ask again
    return false;
  }
  localStorage.removeItem(OFF);
  if (notificationsSupported() && Notification.permission === 'default') await requestPermission();
  return notificationsOn();
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
export function notify({ title, body, tag, onClick }) {
  if (!notificationsOn() || document.visibilityState === 'visible') return null;
  try {
    const notification = new Notification(title, { body, tag, renotify: true });
    notification.onclick = () => {
      window.focus();
      notification.close();
      if (onClick) onClick();
    };
    return notification;
  } catch (err) {
    return null; // some browsers allow notifications only from a service worker
  }
}
