// The Settings screen, shown in place of the chat list (#settings): profile, privacy,
// notifications, blocked people, devices and the password. Each change is saved on the
// node at once, so it follows the account to every device; only the notification switch
// belongs to this browser (notify.js).

import { $, h } from '../dom.js';
import { errorText, uploadFailure } from '../errors.js';
import { pickPhoto } from './photos.js';
import { when } from '../format.js';
import { notificationsOn, notificationsSupported, setNotifications } from '../notify.js';
import { pushEvents, pushState } from '../push.js';
import { avatar } from './text.js';

export class SettingsView {
  constructor(store, session, { dialogs, toast, onClose, onUser, minPassword }) {
    this.store = store;
    this.session = session;
    this.dialogs = dialogs;
    this.toast = toast;
    this.onClose = onClose;
    this.onUser = onUser;
    this.minPassword = minPassword;
    this.root = $('#settings-view');
    this.isOpen = false;
    this.wire();
  }

  wire() {
    $('#settings-back').addEventListener('click', () => this.onClose());
    document.addEventListener('keydown', (e) => {
      const here = this.root.contains(e.target) || e.target === document.body;
      if (this.isOpen && here && e.key === 'Escape' && !document.querySelector('dialog[open]')) {
        e.preventDefault();
        this.onClose();
      }
    });
    $('#name-form').addEventListener('submit', (e) => {
      e.preventDefault();
      this.saveName();
    });
    const receipts = $('#settings-read-receipts');
    receipts.addEventListener('change', () => this.saveSetting({ read_receipts: receipts.checked }, receipts));
    const lastSeen = $('#settings-last-seen');
    lastSeen.addEventListener('change', () => this.saveSetting({ last_seen: lastSeen.value }, lastSeen));
    $('#settings-notify').addEventListener('change', () => this.toggleNotifications());
    pushEvents.addEventListener('change', () => {
      if (this.isOpen) this.renderNotifications();
    });
    $('#photo-change').addEventListener('click', () => this.changePhoto());
    $('#photo-remove').addEventListener('click', () => this.removePhoto());
    $('#password-form').addEventListener('submit', (e) => {
      e.preventDefault();
      this.changePassword();
    });
    this.store.addEventListener('change', (e) => {
      if (this.isOpen && e.detail.what === 'users') this.renderProfile();
    });
  }

  // -- opening and closing ------------------------------------------------------------

  open() {
    this.isOpen = true;
    this.root.hidden = false;
    document.body.classList.add('settings-open');
    $('#settings-display-name').value = this.store.me.display_name || '';
    for (const id of ['#name-error', '#privacy-error', '#password-error', '#devices-error']) $(id).textContent = '';
    this.renderProfile();
    this.renderPrivacy();
    this.renderNotifications();
    this.loadBlocks();
    this.loadDevices();
    $('#settings-title').focus();
  }

  close() {
    if (!this.isOpen) return;
    const hadFocus = this.root.contains(document.activeElement);
    this.isOpen = false;
    this.root.hidden = true;
    document.body.classList.remove('settings-open');
    $('#password-form').reset();
    if (hadFocus) $('#open-settings').focus();
  }

  // -- profile and privacy ------------------------------------------------------------

  renderProfile() {
    const me = this.store.me;
    const name = me.display_name || me.username;
    avatar(name, me.id, $('#settings-avatar'), me.photo);
    $('#settings-name').textContent = name;
    $('#settings-username').textContent = `@${me.username}`;
    $('#photo-remove').hidden = !me.photo;
    $('#photo-change').textContent = me.photo ? 'Change photo' : 'Add a photo';
    $('#password-username').value = me.username;
  }

  renderPrivacy() {
    const settings = this.store.settings || {};
    $('#settings-read-receipts').checked = settings.read_receipts !== false;
    $('#settings-last-seen').value = settings.last_seen || 'everyone';
  }

  async saveName() {
    const input = $('#settings-display-name');
    const error = $('#name-error');
    error.textContent = '';
    $('#name-save').disabled = true;
    try {
      const user = await this.session.api.updateMe(input.value.trim());
      this.store.me = { ...this.store.me, ...user };
      this.store.rememberUser(user);
      this.store.changed('users');
      this.onUser(user);
      input.value = user.display_name;
      this.toast('Display name saved.');
    } catch (err) {
      error.textContent = errorText(err);
    } finally {
      $('#name-save').disabled = false;
    }
  }

  /** A new profile photo: chosen, cropped to a square, uploaded, then made ours. */
  async changePhoto() {
    const status = $('#photo-status');
    let file;
    try {
      file = await pickPhoto(this.dialogs.cropper, 'Profile photo');
    } catch (err) {
      status.textContent = err.sentence || errorText(err);
      return;
    }
    if (!file) return;
    status.textContent = 'Uploading the photo…';
    try {
      await this.session.setPhoto(file);
      status.textContent = '';
      this.renderProfile();
      this.toast('Profile photo updated.');
    } catch (err) {
      status.textContent = uploadFailure(err, file).text;
    }
  }

  async removePhoto() {
    try {
      await this.session.removePhoto();
      this.renderProfile();
      this.toast('Profile photo removed.');
    } catch (err) {
      $('#photo-status').textContent = errorText(err);
    }
  }

  /** Save one privacy setting; the control goes back to what is stored if that fails. */
  async saveSetting(changes, control) {
    const error = $('#privacy-error');
    error.textContent = '';
    control.disabled = true;
    try {
      this.store.settings = await this.session.api.updateSettings(changes);
      this.store.changed('receipts'); // ticks depend on read_receipts
    } catch (err) {
      error.textContent = errorText(err);
    } finally {
      control.disabled = false;
      this.renderPrivacy();
    }
  }

  // -- notifications (this browser only) ----------------------------------------------

  renderNotifications() {
    const box = $('#settings-notify');
    const hint = $('#settings-notify-hint');
    const supported = notificationsSupported();
    const denied = supported && Notification.permission === 'denied';
    const on = notificationsOn();
    box.checked = on;
    box.disabled = !supported || denied;
    const push = on ? pushState() : '';
    hint.textContent = !supported ? 'This browser cannot show notifications.'
      : denied ? 'Blocked for this site in the browser’s settings.'
        : push === 'on' ? 'On this browser, for messages that arrive while the tab is in the background or closed.'
          : 'On this browser, for messages that arrive while the tab is in the background.';
    // Said here only, never in a dialog: the page's own notifications work all the same.
    const unavailable = $('#settings-push-unavailable');
    unavailable.hidden = push !== 'unavailable';
    unavailable.textContent = push === 'unavailable'
      ? 'Background notifications are unavailable in this browser or network: they show while a chatnode tab is open.' : '';
  }

  async toggleNotifications() {
    const box = $('#settings-notify');
    box.disabled = true;
    await setNotifications(box.checked, this.session.api);
    $('#notify-banner').hidden = true;
    this.renderNotifications();
  }

  // -- blocked people -----------------------------------------------------------------

  async loadBlocks() {
    try {
      this.renderBlocks(await this.session.api.blocks());
    } catch (err) {
      this.toast(errorText(err));
    }
  }

  renderBlocks(users) {
    $('#blocked-empty').hidden = users.length > 0;
    $('#blocked-list').replaceChildren(...users.map((user) => {
      const name = user.display_name || user.username;
      return h('li', { class: 'member', dataset: { user: user.id } },
        avatar(name, user.id, null, user.photo),
        h('span', { class: 'member-name' }, name, h('span', { class: 'member-sub' }, `@${user.username}`)),
        h('button', { type: 'button', class: 'secondary small', 'aria-label': `Unblock ${name}`,
          onclick: () => this.unblock(user) }, 'Unblock'));
    }));
  }

  async unblock(user) {
    try {
      await this.session.api.unblock(user.id);
      this.toast(`${user.display_name || user.username} is unblocked.`);
    } catch (err) {
      this.toast(errorText(err));
    }
    await this.loadBlocks();
    keepFocus('#blocked-title');
  }

  // -- devices --------------------------------------------------------------------------

  async loadDevices() {
    try {
      this.renderDevices(await this.session.api.devices());
    } catch (err) {
      $('#devices-error').textContent = errorText(err);
    }
  }

  renderDevices(devices) {
    $('#devices-error').textContent = '';
    $('#device-list').replaceChildren(...devices.map((device) => {
      const name = device.name || 'Unknown device';
      const active = device.last_used ? `Active ${when(device.last_used)}` : `Logged in ${when(device.created)}`;
      return h('li', { class: 'member device', dataset: { device: device.device_id } },
        h('span', { class: 'member-name' }, name,
          h('span', { class: 'member-sub' }, device.current ? `Logged in ${when(device.created)}` : active)),
        device.current
          ? h('span', { class: 'role-badge' }, 'This device')
          : h('button', { type: 'button', class: 'secondary small', 'aria-label': `Log out ${name} (${active.toLowerCase()})`,
            onclick: () => this.revoke(device, name) }, 'Log out'));
    }));
  }

  async revoke(device, name) {
    if (!(await this.dialogs.confirm(`Log out ${name}? It will need the password to log in again.`, 'Log out'))) return;
    try {
      await this.session.api.revokeDevice(device.device_id);
      this.toast(`${name} is logged out.`);
    } catch (err) {
      $('#devices-error').textContent = errorText(err);
    }
    await this.loadDevices();
    keepFocus('#devices-title');
  }

  // -- password -------------------------------------------------------------------------

  /** What is wrong with the form before asking the node, or ''. */
  passwordProblem(current, next, repeat) {
    const min = this.minPassword();
    if (!current || !next) return 'Enter your current password and a new one.';
    if (next.length < min) return `The new password needs at least ${min} characters.`;
    if (next !== repeat) return 'The new passwords do not match.';
    return '';
  }

  async changePassword() {
    const current = $('#password-current');
    const next = $('#password-new');
    const error = $('#password-error');
    error.textContent = this.passwordProblem(current.value, next.value, $('#password-repeat').value);
    if (error.textContent) return;
    $('#password-save').disabled = true;
    try {
      const { revoked } = await this.session.api.changePassword(current.value, next.value);
      $('#password-form').reset();
      this.toast(revoked ? `Password changed. ${revoked} other device${revoked === 1 ? ' was' : 's were'} logged out.`
        : 'Password changed.');
      this.loadDevices();
    } catch (err) {
      error.textContent = errorText(err, 'password');
      if (err.code === 'wrong_password') current.select();
    } finally {
      $('#password-save').disabled = false;
    }
  }
}

/** After a list was redrawn under the keyboard focus, put the focus on its heading. */
function keepFocus(heading) {
  if (document.activeElement && document.activeElement !== document.body) return;
  const el = $(heading);
  el.tabIndex = -1;
  el.focus();
}
