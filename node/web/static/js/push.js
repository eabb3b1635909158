// Web Push for this browser (docs/push.md): with notifications on, the service worker
// (/sw.js) is registered, the browser subscribes to its push service with the node's VAPID
// key, and the subscription is registered on the node as a push target, so notifications
// come even when no tab of the client is open. Turning notifications off or logging out
// unsubscribes. Any failure (no service worker or push in this browser, a page not served
// over https, no push service reachable: common on a LAN without internet) leaves the
// in-page notifications of notify.js, and the Settings screen says so.

const TARGET = 'chatnode.push.target'; // {id, endpoint} of the target this browser registered
const STATE = 'chatnode.push.state'; // 'on' or 'unavailable' (the last attempt)
const SUBSCRIBE_TIMEOUT = 20_000; // ms; a push service that does not answer counts as none
const WORKER_TIMEOUT = 10_000; // ms for the service worker to become active

/** Fires 'change' when pushState() changes. */
export const pushEvents = new EventTarget();

/** Whether this page could register a service worker at all (it needs a secure context). */
export function workerSupported() {
  return window.isSecureContext && 'serviceWorker' in navigator;
}

/** 'on' (subscribed and registered on the node), 'unavailable' (tried and failed), or ''. */
export function pushState() {
  return localStorage.getItem(STATE) || '';
}

function setState(state) {
  if (state) localStorage.setItem(STATE, state);
  else localStorage.removeItem(STATE);
  pushEvents.dispatchEvent(new Event('change'));
}

// Starting and stopping run one after the other, so that "on" then "off" ends unsubscribed.
let queue = Promise.resolve();
function serial(task) {
  const run = queue.then(task, task);
  queue = run.catch(() => {});
  return run;
}

function withTimeout(promise, ms, what) {
  let timer;
  const timeout = new Promise((resolve, reject) => {
    timer = setTimeout(() => reject(new Error(`${what} timed out`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

/** Register the service worker (scope: the whole client); resolves to the active registration or null. */
export async function registerWorker() {
  if (!workerSupported()) return null;
  await navigator.serviceWorker.register('/sw.js', { scope: '/', updateViaCache: 'none' });
  return withTimeout(navigator.serviceWorker.ready, WORKER_TIMEOUT, 'the service worker');
}

/** The registration of the client's service worker if there is one (never registers it). */
export async function workerRegistration() {
  if (!workerSupported()) return null;
  try {
    return (await navigator.serviceWorker.getRegistration('/')) || null;
  } catch (err) {
    return null;
  }
}

function base64urlBytes(text) {
  const base64 = text.replace(/-/g, '+').replace(/_/g, '/');
  const binary = atob(base64 + '='.repeat((4 - (base64.length % 4)) % 4));
  return Uint8Array.from(binary, (ch) => ch.charCodeAt(0));
}

function sameBytes(buffer, bytes) {
  const a = new Uint8Array(buffer);
  return a.length === bytes.length && a.every((value, i) => value === bytes[i]);
}

/**
 * Subscribe this browser and register the subscription on the node (again at every start:
 * registering the same endpoint is idempotent, and renews a target the node dropped).
 * Resolves to true when background notifications are on; never throws.
 */
export function startPush(api) {
  return serial(async () => {
    let on = false;
    try {
      const registration = await registerWorker();
      if (registration && registration.pushManager && Notification.permission === 'granted') {
        const key = base64urlBytes((await api.vapidKey()).public_key);
        let subscription = await registration.pushManager.getSubscription();
        const madeWith = subscription && subscription.options && subscription.options.applicationServerKey;
        if (madeWith && !sameBytes(madeWith, key)) {
          await subscription.unsubscribe(); // made for another key: the node's key changed
          subscription = null;
        }
        if (!subscription) {
          subscription = await withTimeout(
            registration.pushManager.subscribe({ userVisibleOnly: true, applicationServerKey: key }),
            SUBSCRIBE_TIMEOUT, 'subscribing');
        }
        const { endpoint, keys } = subscription.toJSON();
        const target = await api.addPushTarget({ kind: 'webpush', endpoint, keys });
        localStorage.setItem(TARGET, JSON.stringify({ id: target.id, endpoint }));
        on = true;
      }
    } catch (err) {
      on = false; // the in-page notifications remain
    }
    setState(on ? 'on' : 'unavailable');
    return on;
  });
}

/**
 * Unsubscribe this browser and, given an api with a token, delete its target on the node
 * (at logout the node deletes the device's targets itself). Never throws.
 */
export function stopPush(api) {
  return serial(async () => {
    let saved = null;
    try {
      saved = JSON.parse(localStorage.getItem(TARGET) || 'null');
    } catch (err) { /* nothing to delete */ }
    localStorage.removeItem(TARGET);
    const registration = await workerRegistration();
    try {
      const subscription = registration && registration.pushManager
        ? await registration.pushManager.getSubscription() : null;
      if (subscription) await subscription.unsubscribe();
    } catch (err) { /* gone already */ }
    if (saved && saved.id && api && api.token) {
      try {
        await api.deletePushTarget(saved.id);
      } catch (err) { /* deleted already, or the node is away: its push service will answer 410 */ }
    }
    setState('');
  });
}

/** Whether this browser registered a push target that may still be on the node. */
export function hasPushTarget() {
  return Boolean(localStorage.getItem(TARGET));
}
