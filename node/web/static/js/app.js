// Start-up and wiring: the saved session or the login screen, the views, the banners,
// and the address bar (#chat=<id> opens a chat, #settings the settings, so reloads and
// the back button work).

import { $ } from './dom.js';
import { Api } from './api.js';
import { closeText, errorText, sessionEndText, setLimits } from './errors.js';
import { isMuted, Store } from './store.js';
import { Session } from './session.js';
import {
  closeNotifications, dismissOffer, noteOffered, notificationsOn, notify, OFFER_SECONDS, setNotifications, shouldOffer,
} from './notify.js';
import { hasPushTarget, startPush, stopPush, workerSupported } from './push.js';
import { LoginView } from './views/login.js';
import { ChatListView } from './views/chatlist.js';
import { ConversationView } from './views/conversation.js';
import { Dialogs } from './views/dialogs.js';
import { SettingsView } from './views/settings.js';
import { StarredView } from './views/starred.js';
import { chatPhoto, chatTitle, entryText, setPhotoSource } from './views/text.js';
import { signedUrls } from './media.js';

const SAVED = 'chatnode.session';

const api = new Api();
// Avatars show a photo's thumbnail through a signed URL (an <img> cannot send the token).
setPhotoSource((id) => signedUrls(api, id).then((signed) => signed.thumbnail_url || signed.url));
const store = new Store();
let session = null;
let info = null;
let views = null;
let toastTimer = null;
let offerTimer = null;

function toast(text) {
  const el = $('#toast');
  el.textContent = text;
  el.hidden = false;
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => { el.hidden = true; }, 4000);
}

function saved() {
  try {
    const value = JSON.parse(localStorage.getItem(SAVED) || 'null');
    return value && value.token && value.user ? value : null;
  } catch (err) {
    return null;
  }
}

async function boot() {
  try {
    info = await api.info();
    api.learn(info.nodes); // the cluster's other nodes, for when this one is gone
    setLimits(info.limits);
  } catch (err) {
    info = null; // offline: a saved session still starts, and reconnects when it can
  }
  $('#boot').hidden = true;
  const auth = saved();
  if (auth) startSession(auth);
  else showLogin();
}

function showLogin() {
  $('#main-view').hidden = true;
  document.title = 'chatnode';
  if (!views || !views.login) {
    views = { ...views, login: new LoginView(api, (result) => {
      const auth = { token: result.token, device_id: result.device_id, user: result.user };
      localStorage.setItem(SAVED, JSON.stringify(auth));
      views.login.hide();
      startSession(auth);
    }) };
  }
  views.login.show(info);
}

async function startSession(auth) {
  api.token = auth.token;
  store.reset();
  store.me = auth.user;
  store.limits = { ...(info && info.limits) };
  session = new Session(api, store, auth);
  session.addEventListener('unauthorized', (e) => endSession(sessionEndText(e.detail && e.detail.code)));
  session.addEventListener('incoming', (e) => onIncoming(e.detail));
  session.addEventListener('reacted', (e) => onReacted(e.detail));
  session.addEventListener('own-user', (e) => rememberUser(e.detail));
  session.socket.addEventListener('failed', (e) => {
    const { item, error } = e.detail;
    if (item.kind === 'edit' || item.kind === 'delete') {
      session.discard(item.client_msg_id);
      toast(errorText(error, item.kind));
    }
  });
  if (!views || !views.chatList) {
    const dialogs = new Dialogs(store, session, { onOpenChat: openChat, toast });
    // What chat actions (chatactions.js) work with; `session` is the current one.
    const actionsContext = { store, get session() { return session; }, dialogs, toast, onOpenChat: openChat };
    views = {
      ...views,
      dialogs,
      chatList: new ChatListView(store, session, {
        onOpen: openChat, onStartDirect: startDirect, onShowMessage: showMessage, actionsContext,
      }),
      conversation: new ConversationView(store, session, dialogs, {
        onBack: () => openChat(null), toast, actionsContext, onSearchIn: searchIn,
      }),
      starred: new StarredView(store, session, { onClose: () => openChat(null), onShow: showMessage }),
      settings: new SettingsView(store, session, {
        dialogs, toast, onClose: () => openChat(null), onUser: rememberUser,
        minPassword: () => (info && info.min_password_length) || 8,
      }),
    };
    wireChrome();
  } else {
    for (const view of [views.dialogs, views.chatList, views.conversation, views.settings, views.starred]) view.session = session;
  }
  $('#main-view').hidden = false;
  views.chatList.render();
  showNotifyOffer();
  if (notificationsOn()) startPush(api); // renews this browser's push target, or subscribes it
  else if (hasPushTarget()) stopPush(api); // the browser's permission was taken back
  try {
    await session.start();
  } catch (err) {
    if (err.status === 401) {
      endSession(sessionEndText(null));
      return;
    }
    toast(errorText(err));
  }
  route();
}

function endSession(message) {
  if (session) {
    stopPush(null); // the browser unsubscribes; the node deletes a logged-out device's targets itself
    session.stop();
  }
  session = null;
  localStorage.removeItem(SAVED);
  api.token = null;
  store.reset();
  if (views && views.conversation) views.conversation.reset();
  if (views && views.settings) views.settings.close();
  if (views && views.starred) views.starred.close();
  history.replaceState(null, '', location.pathname);
  showLogin();
  if (message) $('#auth-error').textContent = message;
}

function wireChrome() {
  $('#logout').addEventListener('click', async () => {
    if (!(await views.dialogs.confirm('Log out of chatnode on this browser?', 'Log out'))) return;
    await session.logout();
    endSession(null);
  });
  $('#new-group').addEventListener('click', () => views.dialogs.newGroup());
  $('#open-settings').addEventListener('click', openSettings);
  $('#open-starred').addEventListener('click', () => {
    if (location.hash !== '#starred') location.hash = '#starred';
    route();
  });
  $('#conn-retry').addEventListener('click', () => session && session.socket.retryNow());
  $('#notify-on').addEventListener('click', async () => {
    $('#notify-banner').hidden = true;
    if (!(await setNotifications(true, api))) toast('Notifications stay off. You can allow them in the browser settings.');
  });
  $('#notify-later').addEventListener('click', () => {
    dismissOffer();
    $('#notify-banner').hidden = true;
  });
  window.addEventListener('hashchange', route);
  window.addEventListener('popstate', route);
  if (workerSupported()) {
    navigator.serviceWorker.addEventListener('message', (e) => { // from sw.js
      if (!e.data || !session) return;
      if (e.data.type === 'open-chat') openChat(e.data.chat); // a click on a notification
      // A push came while this tab is visible: the node saw no device of ours online, so
      // this tab's connection is probably down. Reconnect without waiting for the backoff.
      if (e.data.type === 'push') session.socket.retryNow();
    });
    navigator.serviceWorker.startMessages();
  }
  document.addEventListener('visibilitychange', () => {
    if (document.visibilityState === 'visible' && store.activeChatId) closeNotifications(store.activeChatId);
  });
  store.addEventListener('change', (e) => {
    if (e.detail.what === 'connection') renderConnection();
  });
  setInterval(renderConnection, 1000);
  document.addEventListener('keydown', (e) => {
    if (e.key === 'Escape' && !document.querySelector('dialog[open]') && store.activeChatId
      && document.activeElement === document.body) openChat(null);
  });
}

function renderConnection() {
  const banner = $('#conn-banner');
  const { state, retryAt, code } = store.connection;
  const retry = $('#conn-retry');
  let text = '';
  if (state === 'offline') {
    const seconds = Math.max(0, Math.ceil(((retryAt || Date.now()) - Date.now()) / 1000));
    const why = closeText(code);
    text = navigator.onLine === false ? 'You are offline. Messages you send will go out when you are back.'
      : `${why ? `${why} ` : ''}Not connected. Reconnecting${seconds ? ` in ${seconds} s` : '…'}`;
  } else if (state === 'connecting') {
    text = 'Connecting…';
  }
  const waiting = session ? session.outbox.waiting().length : 0;
  if (text && waiting) text += ` (${waiting} waiting to send)`;
  banner.hidden = !text;
  banner.dataset.state = state;
  if ($('#conn-text').textContent !== text) $('#conn-text').textContent = text;
  retry.hidden = state !== 'offline' || navigator.onLine === false;
}

/** The notification offer: a one-line banner that goes away by itself after a while (and for
 * good after a few page loads without an answer), unless the keyboard focus is in it. */
function showNotifyOffer() {
  const banner = $('#notify-banner');
  clearTimeout(offerTimer);
  banner.hidden = !shouldOffer();
  if (banner.hidden) return;
  noteOffered();
  const hideLater = () => {
    offerTimer = setTimeout(() => {
      if (banner.contains(document.activeElement)) hideLater();
      else banner.hidden = true;
    }, OFFER_SECONDS * 1000);
  };
  hideLater();
}

function onIncoming(entry) {
  const chat = store.chats.get(entry.chat);
  if (!chat) return;
  const mentioned = (entry.mentions || []).includes(store.me.id);
  if (isMuted(chat) && !mentioned) return; // a muted chat stays quiet, unless it mentions us
  const title = chat.kind === 'group' ? `${store.nameOf(entry.from)} in ${chatTitle(chat)}` : chatTitle(chat);
  const sender = store.users.get(entry.from);
  photoIcon(chat.kind === 'group' ? (sender && sender.photo) || chatPhoto(chat) : chatPhoto(chat)).then((icon) => {
    notify({ title, body: entryText(store, entry), tag: entry.chat, icon, onClick: () => openChat(entry.chat) });
  });
}

/** The full address of a photo's thumbnail, for a notification's icon (undefined without one). */
async function photoIcon(photo) {
  if (!photo) return undefined;
  try {
    const signed = await signedUrls(api, photo);
    return new URL(signed.thumbnail_url || signed.url, location.href).href;
  } catch (err) {
    return undefined;
  }
}

/** Someone reacted to one of our messages: tell us as WhatsApp does (unless the chat is muted). */
function onReacted({ event, entry }) {
  const chat = store.chats.get(event.chat);
  if (!chat || isMuted(chat)) return;
  const text = entryText(store, entry);
  notify({
    title: store.nameOf(event.user), body: `Reacted ${event.emoji} to your message${text ? `: “${text}”` : ''}`,
    tag: event.chat, onClick: () => openChat(event.chat),
  });
}

// -- which chat is open: the address bar is the truth -------------------------------------

function openChat(chatId) {
  const hash = chatId ? `#chat=${chatId}` : '';
  if (location.hash !== hash) {
    if (chatId) location.hash = hash;
    else history.pushState(null, '', location.pathname);
  }
  route();
}

async function startDirect(userId) {
  try {
    openChat(await session.startDirect(userId));
  } catch (err) {
    toast(errorText(err, 'chat'));
  }
}

function openSettings() {
  if (location.hash !== '#settings') location.hash = '#settings';
  route();
}

/** The saved session keeps the user as the node last described it (a new display name). */
function rememberUser(user) {
  const auth = saved();
  if (!auth) return;
  auth.user = { ...auth.user, ...user };
  localStorage.setItem(SAVED, JSON.stringify(auth));
}

/** Search one chat's messages, from the sidebar's search (on a phone, back to the list for it). */
function searchIn(chatId) {
  if (window.matchMedia('(max-width: 720px)').matches) openChat(null);
  views.chatList.searchIn(chatId);
  $('#search').focus();
}

/** Open a chat at one of its messages (from the starred list or a search result). */
async function showMessage(chatId, seq) {
  openChat(chatId);
  await session.openChat(chatId);
  views.conversation.reveal(seq);
}

function route() {
  if (!session) return;
  const wantSettings = location.hash === '#settings';
  if (wantSettings && !views.settings.isOpen) views.settings.open();
  else if (!wantSettings) views.settings.close();
  const wantStarred = location.hash === '#starred';
  if (wantStarred && !views.starred.isOpen) views.starred.open();
  else if (!wantStarred) views.starred.close();
  const match = /^#chat=(\d+)$/.exec(location.hash);
  const chatId = match ? match[1] : null;
  if (chatId && chatId === store.activeChatId) return;
  if (chatId) {
    views.conversation.open(chatId);
    if (document.visibilityState === 'visible') closeNotifications(chatId);
    session.openChat(chatId).then(() => {
      if (!store.chats.has(chatId)) openChat(null);
    });
  } else if (store.activeChatId || !$('#chat-view').hidden) {
    session.closeChat();
    views.conversation.close();
  }
  views.chatList.schedule();
}

boot();
