// Browser notifications for messages that arrive while the tab is hidden. Permission is
// asked only from a click on the banner's button, never on load.

const DISMISSED = 'chatnode.notifications.dismissed';

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
  if (!notificationsSupported() || Notification.permission !== 'granted' || document.visibilityState === 'visible') return null;
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
