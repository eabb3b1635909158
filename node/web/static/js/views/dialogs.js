// Dialogs: new group, chat info (members, roles, disappearing messages), message info
// (who has read), confirmations, sending attachments, and the photo viewer. Each is a
// <dialog>: focus stays inside, Escape closes it.

import { $, h, icon } from '../dom.js';
import { errorText, uploadFailure } from '../errors.js';
import { fileSize, lastSeen, TTL_CHOICES, ttlLabel, when } from '../format.js';
import { isMuted } from '../store.js';
import { chatActions } from './chatactions.js';
import { PhotoCropper, pickPhoto } from './photos.js';
import { tick } from './chatlist.js';
import { avatar, chatAvatarId, chatPhoto, chatTitle, entryText } from './text.js';

export class Dialogs {
  constructor(store, session, { onOpenChat, toast }) {
    this.store = store;
    this.session = session;
    this.onOpenChat = onOpenChat;
    this.toast = toast;
    this.infoChatId = null;
    for (const dialog of document.querySelectorAll('dialog')) {
      dialog.addEventListener('click', (e) => {
        if (e.target.closest('[data-close]')) dialog.close('cancel');
        else if (e.target === dialog) dialog.close('cancel'); // a click on the backdrop
      });
    }
    this.setupGroupDialog();
    this.cropper = new PhotoCropper();
    $('#info-dialog').addEventListener('close', () => { this.infoChatId = null; this.addMember = null; });
    store.addEventListener('change', (e) => {
      const { what, chat } = e.detail;
      if (this.infoChatId && (chat === this.infoChatId || what === 'presence' || what === 'users' || what === 'blocked')
        && ['members', 'chats', 'presence', 'users', 'blocked'].includes(what)) this.renderInfo();
    });
  }

  // -- small ones ---------------------------------------------------------------------

  confirm(text, okLabel = 'OK') {
    const dialog = $('#confirm-dialog');
    $('#confirm-text').textContent = text;
    $('#confirm-ok').textContent = okLabel;
    dialog.returnValue = '';
    dialog.showModal();
    $('#confirm-ok').focus();
    return new Promise((resolve) => {
      dialog.addEventListener('close', () => resolve(dialog.returnValue === 'ok'), { once: true });
    });
  }

  /** Pick the chats to forward an entry to (one or several): resolves to their ids, or null. */
  forward(entry) {
    const dialog = $('#forward-dialog');
    const chosen = new Set();
    const search = $('#forward-search');
    const send = $('#forward-send');
    $('#forward-preview').textContent = entryText(this.store, entry);
    $('#forward-error').textContent = '';
    search.value = '';
    const render = () => {
      const query = search.value.trim().toLowerCase();
      const chats = this.store.sortedChats().filter((chat) => chat.left_seq === undefined && !chat.hidden
        && (!query || chatTitle(chat).toLowerCase().includes(query)));
      $('#forward-list').replaceChildren(...chats.map((chat) => {
        const id = `forward-${chat.id}`;
        const box = h('input', { id, type: 'checkbox', checked: chosen.has(chat.id), value: chat.id });
        box.addEventListener('change', () => {
          if (box.checked) chosen.add(chat.id);
          else chosen.delete(chat.id);
          update();
        });
        return h('li', null, h('label', { for: id, class: 'pick forward-pick' }, box,
          avatar(chatTitle(chat), chatAvatarId(chat), null, chatPhoto(chat)), h('span', null, chatTitle(chat))));
      }));
    };
    const update = () => {
      send.textContent = chosen.size > 1 ? `Forward to ${chosen.size} chats` : 'Forward';
      send.disabled = chosen.size === 0;
    };
    search.oninput = render;
    render();
    update();
    dialog.returnValue = '';
    dialog.showModal();
    search.focus();
    return new Promise((resolve) => {
      dialog.addEventListener('close', () => resolve(dialog.returnValue === 'ok' ? [...chosen] : null), { once: true });
    });
  }

  /** For how long to mute a chat: resolves to seconds, true (always), or null if cancelled. */
  mute(title) {
    const dialog = $('#mute-dialog');
    $('#mute-text').textContent = `No notifications from “${title}”. Its unread messages are still counted.`;
    dialog.returnValue = '';
    dialog.showModal();
    $('#mute-form input:checked').focus();
    return new Promise((resolve) => {
      dialog.addEventListener('close', () => {
        const value = $('#mute-form input:checked').value;
        resolve(dialog.returnValue === 'ok' ? (value === 'always' ? true : Number(value)) : null);
      }, { once: true });
    });
  }

  /** Confirm a report: resolves to {reason, option} (the checkbox, if offered), or null. */
  report({ title, text, option }) {
    const dialog = $('#report-dialog');
    $('#report-title').textContent = title;
    $('#report-text').textContent = text;
    $('#report-reason').value = '';
    $('#report-option-row').hidden = !option;
    $('#report-option-text').textContent = option || '';
    $('#report-option').checked = Boolean(option);
    dialog.returnValue = '';
    dialog.showModal();
    $('#report-reason').focus();
    return new Promise((resolve) => {
      dialog.addEventListener('close', () => {
        resolve(dialog.returnValue === 'ok'
          ? { reason: $('#report-reason').value.trim(), option: Boolean(option) && $('#report-option').checked } : null);
      }, { once: true });
    });
  }

  /** Preview files about to be sent; resolves to the caption, or null if cancelled. */
  attach(files) {
    const dialog = $('#attach-dialog');
    const preview = $('#attach-preview');
    const urls = [];
    preview.replaceChildren(...files.map((file) => {
      const type = file.type || '';
      if (type.startsWith('image/') || type.startsWith('video/') || type.startsWith('audio/')) {
        const url = URL.createObjectURL(file);
        urls.push(url);
        if (type.startsWith('image/')) return h('img', { src: url, alt: `Preview of ${file.name}` });
        if (type.startsWith('video/')) return h('video', { src: url, controls: true, muted: true, 'aria-label': `Preview of ${file.name}` });
        return h('div', { class: 'attach-audio' }, h('span', null, file.name), h('audio', { src: url, controls: true }));
      }
      return h('div', { class: 'attach-file' }, icon('file'), h('span', null, file.name), h('span', { class: 'muted' }, fileSize(file.size)));
    }));
    $('#attach-title').textContent = files.length > 1 ? `Send ${files.length} files` : `Send ${files[0].name}`;
    $('#attach-caption').value = '';
    $('#attach-error').textContent = '';
    dialog.returnValue = '';
    dialog.showModal();
    $('#attach-caption').focus();
    return new Promise((resolve) => {
      const form = $('#attach-form');
      const onSubmit = (e) => {
        e.preventDefault();
        const limit = this.store.limits.max_message_bytes || 16384;
        const bytes = new TextEncoder().encode($('#attach-caption').value.trim()).length;
        if (bytes > limit) {
          $('#attach-error').textContent = 'This caption is too long. Shorten it, or send the rest as a message.';
          return;
        }
        dialog.close('send');
      };
      form.addEventListener('submit', onSubmit);
      dialog.addEventListener('close', () => {
        form.removeEventListener('submit', onSubmit);
        for (const url of urls) URL.revokeObjectURL(url);
        preview.replaceChildren();
        resolve(dialog.returnValue === 'send' ? $('#attach-caption').value.trim() : null);
      }, { once: true });
    });
  }

  // -- new group ----------------------------------------------------------------------

  setupGroupDialog() {
    this.chosen = new Map();
    const search = $('#group-search');
    let timer = null;
    let seq = 0;
    search.addEventListener('input', () => {
      clearTimeout(timer);
      const prefix = search.value.trim().toLowerCase().replace(/^@/, '');
      const mine = ++seq;
      if (!prefix) {
        $('#group-results').replaceChildren();
        return;
      }
      timer = setTimeout(async () => {
        try {
          const users = await this.session.api.searchUsers(prefix, 8);
          if (mine === seq) this.renderGroupResults(users);
        } catch (err) { /* ignore */ }
      }, 200);
    });
    search.addEventListener('keydown', (e) => {
      if (e.key === 'Enter') {
        e.preventDefault(); // Enter picks the first result instead of submitting
        const first = $('#group-results button');
        if (first) first.click();
      }
    });
    $('#group-form').addEventListener('submit', async (e) => {
      e.preventDefault();
      const title = $('#group-title').value.trim();
      const error = $('#group-error');
      if (!title) {
        error.textContent = 'Give the group a name.';
        $('#group-title').focus();
        return;
      }
      $('#group-create').disabled = true;
      try {
        const chatId = await this.session.createGroup(title, [...this.chosen.keys()]);
        $('#group-dialog').close();
        this.onOpenChat(chatId);
      } catch (err) {
        error.textContent = errorText(err, 'group');
      } finally {
        $('#group-create').disabled = false;
      }
    });
  }

  newGroup() {
    this.chosen.clear();
    $('#group-title').value = '';
    $('#group-search').value = '';
    $('#group-error').textContent = '';
    $('#group-results').replaceChildren();
    this.renderChosen();
    $('#group-dialog').showModal();
    $('#group-title').focus();
  }

  renderGroupResults(users) {
    $('#group-results').replaceChildren(...users.filter((u) => !this.chosen.has(u.id)).map((user) => h('li', null,
      h('button', {
        type: 'button', class: 'pick',
        onclick: () => {
          this.chosen.set(user.id, user);
          $('#group-search').value = '';
          $('#group-results').replaceChildren();
          this.renderChosen();
          $('#group-search').focus();
        },
      }, avatar(user.display_name || user.username, user.id, null, user.photo), ` ${user.display_name || user.username} `, h('span', { class: 'muted' }, `@${user.username}`)))));
  }

  renderChosen() {
    $('#group-chosen').replaceChildren(...[...this.chosen.values()].map((user) => h('li', { class: 'chip' },
      user.display_name || user.username,
      h('button', {
        type: 'button', class: 'icon-button small', 'aria-label': `Remove ${user.username}`,
        onclick: () => {
          this.chosen.delete(user.id);
          this.renderChosen();
        },
      }, icon('close')))));
  }

  // -- chat info ----------------------------------------------------------------------

  chatInfo(chatId) {
    if (!chatId) return;
    this.infoChatId = chatId;
    $('#info-error').textContent = '';
    const chat = this.store.chats.get(chatId);
    if (chat && chat.kind === 'group') this.session.loadMembers(chatId);
    this.renderInfo();
    const dialog = $('#info-dialog');
    if (!dialog.open) dialog.showModal();
  }

  async run(action) {
    $('#info-error').textContent = '';
    try {
      await action();
    } catch (err) {
      $('#info-error').textContent = errorText(err, 'group');
    }
  }

  renderInfo() {
    const chat = this.store.chats.get(this.infoChatId);
    const body = $('#info-body');
    if (!chat) {
      body.replaceChildren(h('p', null, 'This chat is gone.'));
      return;
    }
    const focused = document.activeElement && document.activeElement.id;
    const title = chatTitle(chat);
    $('#info-title').textContent = chat.kind === 'group' ? 'Group info' : 'Contact info';
    const parts = [h('div', { class: 'info-head' }, avatar(title, chatAvatarId(chat), null, chatPhoto(chat)), h('div', null, h('p', { class: 'info-name' }, title),
      chat.kind === 'direct' && chat.peer ? h('p', { class: 'muted' }, `@${chat.peer.username}`, this.presenceText(chat.peer.id)) : null))];
    if (chat.kind === 'group') parts.push(...this.groupInfo(chat));
    parts.push(this.ttlControl(chat));
    parts.push(this.muteControl(chat));
    parts.push(this.chatActionList(chat));
    body.replaceChildren(...parts);
    if (focused && document.getElementById(focused)) document.getElementById(focused).focus();
  }

  /** What chat actions (chatactions.js) need of this page. */
  actionsContext() {
    return { store: this.store, session: this.session, dialogs: this, toast: this.toast, onOpenChat: this.onOpenChat };
  }

  muteControl(chat) {
    const muted = isMuted(chat);
    const box = h('input', { id: 'info-mute', type: 'checkbox', role: 'switch', class: 'switch', checked: muted });
    box.addEventListener('change', async () => {
      const actions = chatActions(this.actionsContext());
      if (box.checked) await actions.mute(chat);
      else await actions.unmute(chat);
      this.renderInfo();
    });
    const hint = !muted ? 'Notifications are on.'
      : chat.muted_until ? `Muted until ${when(chat.muted_until)}.` : 'Muted. Unread messages are still counted.';
    return h('div', { class: 'setting-row info-mute' },
      h('label', { for: 'info-mute' }, 'Mute notifications', h('span', { class: 'hint' }, hint)), box);
  }

  /** Block, report, clear, exit or delete: the chat's actions as a list of buttons. */
  chatActionList(chat) {
    const actions = chatActions(this.actionsContext());
    const direct = chat.kind === 'direct' && chat.peer;
    const name = direct ? this.store.nameOf(chat.peer.id) : '';
    const blocked = direct && this.store.blocked.has(chat.peer.id);
    const button = (label, iconName, onclick, danger = false) => h('li', null, h('button', {
      type: 'button', class: `action-row${danger ? ' danger-text' : ''}`, onclick,
    }, icon(iconName), h('span', null, label)));
    const left = chat.left_seq !== undefined;
    return h('ul', { class: 'action-list', 'aria-label': 'Chat actions' },
      // (the dialog is drawn again when the list of blocked people changes)
      direct ? button(blocked ? `Unblock ${name}` : `Block ${name}`, 'ban',
        () => (blocked ? actions.unblock(chat) : actions.block(chat)), !blocked) : null,
      button(direct ? `Report ${name}` : 'Report group', 'flag', () => actions.report(chat), true),
      button('Clear chat', 'eraser', () => actions.clear(chat)),
      chat.kind === 'group' && !left
        ? button('Exit group', 'logout', () => actions.exit(chat), true)
        : button(chat.kind === 'group' ? 'Delete group' : 'Delete chat', 'trash', async () => {
          await actions.remove(chat);
          if (!this.store.chats.get(chat.id) || this.store.chats.get(chat.id).hidden) $('#info-dialog').close();
        }, true));
  }

  async changeGroupPhoto(chat) {
    let file;
    try {
      file = await pickPhoto(this.cropper, 'Group photo');
    } catch (err) {
      $('#info-error').textContent = err.sentence || errorText(err);
      return;
    }
    if (!file) return;
    $('#info-error').textContent = '';
    try {
      await this.session.setPhoto(file, chat.id);
    } catch (err) {
      $('#info-error').textContent = err.code === 'forbidden' ? errorText(err, 'group') : uploadFailure(err, file).text;
    }
  }

  presenceText(userId) {
    const presence = this.store.presence.get(userId);
    if (!presence || presence.hidden) return '';
    return presence.online ? ' · online' : presence.last_seen ? ` · ${lastSeen(presence.last_seen)}` : '';
  }

  groupInfo(chat) {
    const admin = chat.role === 'admin';
    const active = chat.left_seq === undefined;
    const parts = [];
    if (admin && active) {
      parts.push(h('div', { class: 'photo-buttons' },
        h('button', { type: 'button', class: 'secondary small', onclick: () => this.changeGroupPhoto(chat) },
          chat.photo ? 'Change group photo' : 'Add a group photo'),
        chat.photo ? h('button', {
          type: 'button', class: 'link small',
          onclick: () => this.run(() => this.session.removePhoto(chat.id)),
        }, 'Remove group photo') : null));
    }
    if (active) {
      const rename = h('form', { class: 'inline-form' },
        h('label', { for: 'info-rename' }, 'Group name'),
        h('div', { class: 'inline-row' },
          h('input', { id: 'info-rename', value: chat.title || '', maxlength: '100' }),
          h('button', { type: 'submit', class: 'secondary' }, 'Rename')));
      rename.addEventListener('submit', (e) => {
        e.preventDefault();
        const value = $('#info-rename').value.trim();
        if (value && value !== chat.title) this.run(() => this.session.rename(chat.id, value));
      });
      parts.push(rename);
    }
    const members = this.store.members.get(chat.id);
    const list = members ? [...members.values()] : [];
    parts.push(h('h3', { class: 'section-title' }, members ? `${list.length} members` : 'Members'));
    parts.push(h('ul', { class: 'member-list', 'aria-label': 'Members' }, list.map((member) => {
      const user = member.user;
      const me = user.id === this.store.me.id;
      const name = me ? 'You' : user.display_name || user.username;
      const controls = admin && !me && active ? [
        h('button', {
          type: 'button', class: 'link small',
          onclick: () => this.run(() => this.session.setAdmin(chat.id, user.id, member.role !== 'admin')),
        }, member.role === 'admin' ? 'Dismiss as admin' : 'Make admin'),
        h('button', {
          type: 'button', class: 'link small danger-text', 'aria-label': `Remove ${name}`,
          onclick: async () => {
            if (await this.confirm(`Remove ${name} from the group?`, 'Remove')) this.run(() => this.session.removeMember(chat.id, user.id));
          },
        }, 'Remove'),
      ] : [];
      return h('li', { class: 'member', dataset: { user: user.id } },
        avatar(user.display_name || user.username, user.id, null, user.photo),
        h('span', { class: 'member-name' }, name, me ? null : h('span', { class: 'muted small' }, ` @${user.username}`)),
        member.role === 'admin' ? h('span', { class: 'role-badge' }, 'Admin') : null,
        h('span', { class: 'member-controls' }, controls));
    })));
    if (admin && active) parts.push(this.addMemberControl(chat));
    return parts;
  }

  /** The add-people search keeps its query and results across re-renders of the info body
   * (presence and member updates re-render it while someone types), so it is built once per
   * opened chat and reused. */
  addMemberControl(chat) {
    if (this.addMember && this.addMember.chatId === chat.id) return this.addMember.element;
    const input = h('input', { id: 'info-add', type: 'search', placeholder: 'Search by username', autocomplete: 'off', spellcheck: 'false' });
    const results = h('ul', { class: 'pick-list', 'aria-label': 'People to add' });
    let timer = null;
    input.addEventListener('input', () => {
      clearTimeout(timer);
      const prefix = input.value.trim().toLowerCase().replace(/^@/, '');
      if (!prefix) {
        results.replaceChildren();
        return;
      }
      timer = setTimeout(async () => {
        const members = this.store.members.get(chat.id) || new Map();
        let users = [];
        try {
          users = await this.session.api.searchUsers(prefix, 8);
        } catch (err) { /* ignore */ }
        results.replaceChildren(...users.filter((u) => !members.has(u.id)).map((user) => h('li', null,
          h('button', {
            type: 'button', class: 'pick',
            onclick: () => this.run(async () => {
              await this.session.addMembers(chat.id, [user.id]);
              input.value = '';
              results.replaceChildren();
            }),
          }, avatar(user.display_name || user.username, user.id, null, user.photo), ` Add ${user.display_name || user.username} `,
          h('span', { class: 'muted' }, `@${user.username}`)))));
      }, 200);
    });
    const element = h('div', { class: 'add-member' }, h('label', { for: 'info-add' }, 'Add people'), input, results);
    this.addMember = { chatId: chat.id, element };
    return element;
  }

  ttlControl(chat) {
    const select = h('select', { id: 'info-ttl' }, TTL_CHOICES.map(([value, label]) => h('option', { value: String(value) }, label)));
    if (!TTL_CHOICES.some(([value]) => value === (chat.ttl || 0))) {
      select.append(h('option', { value: String(chat.ttl) }, ttlLabel(chat.ttl)));
    }
    select.value = String(chat.ttl || 0);
    select.disabled = chat.left_seq !== undefined;
    select.addEventListener('change', () => this.run(() => this.session.setTtl(chat.id, Number(select.value))));
    return h('div', { class: 'ttl-control' },
      h('label', { for: 'info-ttl' }, icon('timer'), ' Disappearing messages'),
      select,
      h('p', { class: 'muted small' }, 'New messages in this chat disappear for everyone after this time.'));
  }

  // -- message info -------------------------------------------------------------------

  async receipts(chatId, entry) {
    const dialog = $('#receipts-dialog');
    const body = $('#receipts-body');
    body.replaceChildren(h('p', { class: 'muted' }, 'Loading…'));
    dialog.showModal();
    const chat = this.store.chats.get(chatId);
    try {
      const who = await this.session.api.receipts(chatId, entry.seq);
      if (chat && chat.kind === 'direct') { // one person: where the message is with them
        const peer = chat.peer ? this.store.nameOf(chat.peer.id) : 'them';
        const [state, text] = who.read.length ? ['read', `Read by ${peer}`]
          : who.delivered.length ? ['delivered', `Delivered to ${peer}`] : ['sent', `Sent, not delivered to ${peer} yet`];
        body.replaceChildren(
          h('blockquote', { class: 'receipt-quote' }, entry.text || 'Attachment'),
          h('p', { class: `receipt-state ${state}` }, tick(state), ` ${text}`));
        return;
      }
      for (const id of [...who.read, ...who.delivered, ...who.pending]) if (!this.store.users.has(id)) this.session.ensureUser(id);
      const section = (title, ids, cls) => h('section', { class: `receipt-group ${cls}` },
        h('h3', { class: 'section-title' }, `${title} (${ids.length})`),
        ids.length ? h('ul', { class: 'member-list' }, ids.map((id) => h('li', { class: 'member' },
          avatar(this.store.nameOf(id), id, null, this.store.users.get(id)?.photo), h('span', { class: 'member-name' }, this.store.nameOf(id)))))
          : h('p', { class: 'muted small' }, 'No one yet'));
      body.replaceChildren(
        h('blockquote', { class: 'receipt-quote' }, entry.text || 'Attachment'),
        section('Read by', who.read, 'read'),
        section('Delivered to', who.delivered, 'delivered'),
        section('Waiting', who.pending, 'pending'));
    } catch (err) {
      body.replaceChildren(h('p', { class: 'error' }, errorText(err)));
    }
  }
}
