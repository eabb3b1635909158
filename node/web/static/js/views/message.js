// One entry of a conversation as a bubble: sender, reply quote, media, text, time, ticks,
// and the actions that apply to it.

import { h, icon } from '../dom.js';
import { sendFailure } from '../errors.js';
import { fileSize, time } from '../format.js';
import { describeMedia, signedUrls } from '../media.js';
import { tick } from './chatlist.js';
import { audioPlayer } from './player.js';
import { highlightMentions } from './mentions.js';
import { isMenuKey, onContextMenu } from './menu.js';
import { reactionChips } from './reactions.js';
import { richText } from './richtext.js';
import { entryText, systemText } from './text.js';

/**
 * ctx: {store, api, chat, youBlocked, actions: {reply, react, menu, showReactions, openImage, jumpTo, retry,
 *       discard, editFailed, unblockAndRetry}}
 * view: {entry, status, showSender, pending (outbox item or null)}
 */
export function messageNode(ctx, view) {
  const { store, chat } = ctx;
  const { entry } = view;
  if (entry.kind === 'system') {
    return h('div', { class: 'row system', dataset: { seq: entry.seq } }, h('p', { class: 'system-note' }, systemText(store, entry)));
  }
  const own = entry.from === store.me.id;
  const deleted = entry.kind === 'deleted';
  const sender = !own && chat.kind === 'group' && view.showSender
    ? h('span', { class: 'sender' }, store.nameOf(entry.from)) : null;
  const body = [];
  if (deleted) {
    body.push(h('p', { class: 'text deleted' }, icon('ban'), own ? ' You deleted this message' : ' This message was deleted'));
  } else {
    if (entry.forwarded) body.push(h('span', { class: 'forwarded' }, icon('forward'), 'Forwarded'));
    if (entry.reply_to) body.push(quote(ctx, entry));
    if (entry.media || entry.kind !== 'text') body.push(mediaNode(ctx, entry));
    if (entry.text) {
      const text = h('div', { class: 'text' }, richText(entry.text));
      highlightMentions(text, entry, store);
      body.push(text);
    }
  }
  const meta = h('span', { class: 'meta' },
    entry.starred && !deleted ? h('span', { class: 'starred', role: 'img', 'aria-label': 'Starred', title: 'Starred' }, icon('star')) : null,
    entry.edited && !deleted ? h('span', { class: 'edited' }, 'edited') : null,
    entry.expires_at ? h('span', { class: 'expiring', title: 'Disappearing message', 'aria-label': 'Disappearing message' }, icon('timer')) : null,
    h('time', { datetime: new Date(entry.ts).toISOString() }, time(entry.ts)),
    own && !deleted ? tick(view.status) : null);
  const reacted = (entry.reactions || []).length
    ? `. Reactions: ${entry.reactions.map((g) => `${g.emoji} ${g.users.length}`).join(', ')}` : '';
  const bubble = h('div', {
    class: 'bubble', tabindex: '-1',
    'aria-label': `${own ? 'You' : store.nameOf(entry.from)}, ${time(entry.ts)}: ${entryText(store, entry)}${reacted}`,
  }, sender, body, meta);
  const chips = deleted || view.pending ? null : reactionChips(store, entry, (target, emoji) => ctx.actions.showReactions(target, emoji));
  const row = h('div', {
    class: `row msg ${own ? 'own' : 'theirs'}${deleted ? ' is-deleted' : ''}${view.pending ? ' is-pending' : ''}`,
    dataset: view.pending ? { cmid: view.pending.client_msg_id } : { seq: entry.seq, id: entry.id },
  }, h('div', { class: 'bubble-col' }, bubble, chips));
  const actions = view.pending ? pendingActions(ctx, view.pending) : entryActions(ctx, entry, deleted);
  if (actions) row.append(actions);
  if (!view.pending) {
    onContextMenu(row, (at) => ctx.actions.menu(entry, at));
    bubble.addEventListener('keydown', (e) => {
      if (e.target === bubble && (e.key === 'Enter' || isMenuKey(e))) {
        e.preventDefault();
        ctx.actions.menu(entry, bubble);
      }
    });
  }
  return row;
}

/** On hover or focus: React, Reply, and "More actions" (the message's menu). */
function entryActions(ctx, entry, deleted) {
  const { actions } = ctx;
  const buttons = [
    !deleted && !ctx.readOnly ? actionButton('smile', 'React', (e) => actions.react(entry, e.currentTarget)) : null,
    !deleted && !ctx.readOnly ? actionButton('reply', 'Reply', () => actions.reply(entry)) : null,
    actionButton('more', 'More actions', (e) => actions.menu(entry, e.currentTarget), { 'aria-haspopup': 'menu' }),
  ];
  return h('div', { class: 'actions', role: 'group', 'aria-label': 'Message actions' }, buttons);
}

function pendingActions(ctx, item) {
  if (item.state !== 'failed') return null;
  const { chat, store, actions } = ctx;
  const peer = chat.kind === 'direct' && chat.peer ? store.nameOf(chat.peer.id) : null;
  const failure = sendFailure(item, { peer, youBlocked: ctx.youBlocked });
  const buttons = {
    edit: () => h('button', { type: 'button', class: 'link', onclick: () => actions.editFailed(item) }, 'Edit'),
    unblock: () => h('button', { type: 'button', class: 'link', onclick: () => actions.unblockAndRetry(item) }, `Unblock ${peer || ''}`.trim()),
    retry: () => h('button', { type: 'button', class: 'link', onclick: () => actions.retry(item) }, 'Retry'),
    discard: () => h('button', { type: 'button', class: 'link', onclick: () => actions.discard(item) }, 'Discard'),
  };
  return h('div', { class: 'actions failed-actions', role: 'group', 'aria-label': 'Not sent' },
    h('span', { class: 'failed-reason', role: 'alert' }, failure.text),
    failure.actions.map((name) => buttons[name]()));
}

function actionButton(name, label, onclick, extra = {}) {
  return h('button', { type: 'button', class: 'icon-button small', 'aria-label': label, title: label, onclick, ...extra }, icon(name));
}

function quote(ctx, entry) {
  const log = ctx.store.log(ctx.chat.id);
  const target = (entry.reply_to_seq && log.bySeq.get(entry.reply_to_seq)) || log.byId.get(entry.reply_to);
  const who = target ? ctx.store.nameOf(target.from) : '';
  const text = target ? entryText(ctx.store, target) : 'Original message';
  return h('button', {
    type: 'button', class: 'quote', 'aria-label': `Reply to ${who}: ${text}. Show it.`,
    onclick: () => ctx.actions.jumpTo(target ? target.seq : entry.reply_to_seq),
  }, h('span', { class: 'quote-who' }, who), h('span', { class: 'quote-text' }, text));
}

/** Inline media: thumbnails for images (a click opens the photo), players for audio and video. */
function mediaNode(ctx, entry) {
  const media = entry.media || {};
  const kind = entry.kind;
  const label = kind === 'file' ? media.name || 'File' : describeMedia(kind);
  const box = h('div', { class: `media media-${kind}` });
  if (!media.id) {
    box.append(h('span', { class: 'media-missing muted' }, `${label} unavailable`));
    return box;
  }
  if (kind === 'image') {
    const img = h('img', { alt: entry.text ? `Photo: ${entry.text}` : 'Photo', loading: 'lazy', decoding: 'async' });
    if (media.width && media.height) {
      img.width = Math.min(media.width, 320);
      img.height = Math.round(img.width * media.height / media.width);
    }
    const button = h('button', { type: 'button', class: 'media-open', 'aria-label': 'Open photo', onclick: () => ctx.actions.openImage(entry) }, img);
    box.append(button);
    signedUrls(ctx.api, media.id).then((signed) => { img.src = signed.thumbnail_url || signed.url; })
      .catch(() => box.classList.add('broken'));
  } else if (kind === 'video') {
    const video = h('video', { controls: true, preload: 'metadata', playsinline: true, 'aria-label': 'Video' });
    box.append(video);
    signedUrls(ctx.api, media.id).then((signed) => {
      if (signed.thumbnail_url) video.poster = signed.thumbnail_url;
      video.src = signed.url;
    }).catch(() => box.classList.add('broken'));
  } else if (kind === 'audio') {
    const voice = /^voice-note/.test(media.name || '');
    const label = voice ? 'voice message' : `audio${media.name ? ` ${media.name}` : ''}`;
    box.append(audioPlayer(media, label, signedUrls(ctx.api, media.id).then((signed) => signed.url)));
  } else {
    const link = h('a', { class: 'file-link', download: media.name || 'file', rel: 'noopener' },
      h('span', { class: 'file-icon' }, (label.split('.').pop() || 'file').slice(0, 4).toUpperCase()),
      h('span', { class: 'file-name' }, label),
      media.size ? h('span', { class: 'file-size muted' }, fileSize(media.size)) : null);
    box.append(link);
    signedUrls(ctx.api, media.id).then((signed) => { link.href = signed.url; }).catch(() => box.classList.add('broken'));
  }
  return box;
}
