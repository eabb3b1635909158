// What can be done to a whole chat, for ourselves: archive, mute, pin, mark as unread or read,
// clear, delete; block and report. The same actions show in the chat list's menu, the
// conversation's header menu and the chat info dialog.

import { errorText } from '../errors.js';
import { isMuted } from '../store.js';
import { chatTitle } from './text.js';

export const MAX_PINNED = 3;

/**
 * ctx: {store, session, dialogs, toast, onOpenChat}
 * Each action resolves once done; failures are said in a toast.
 */
export function chatActions(ctx) {
  const { store, session, dialogs, toast } = ctx;
  const run = async (action, context) => {
    try {
      await action();
      return true;
    } catch (err) {
      toast(errorText(err, context));
      return false;
    }
  };
  const peerName = (chat) => (chat.peer ? store.nameOf(chat.peer.id) : chatTitle(chat));
  const actions = {
    archive: (chat, archived) => run(() => session.setPrefs(chat.id, { archived })).then((ok) => {
      if (ok) toast(archived ? 'Chat archived.' : 'Chat unarchived.');
    }),
    mute: async (chat) => {
      const seconds = await dialogs.mute(chatTitle(chat));
      if (seconds !== null) await run(() => session.setPrefs(chat.id, { mute: seconds }));
    },
    unmute: (chat) => run(() => session.setPrefs(chat.id, { mute: false })),
    pin: (chat, pinned) => {
      const count = [...store.chats.values()].filter((c) => c.pinned && !c.hidden && c.id !== chat.id).length;
      if (pinned && count >= MAX_PINNED) {
        toast(`You can only pin up to ${MAX_PINNED} chats.`);
        return Promise.resolve(false);
      }
      return run(() => session.setPrefs(chat.id, { pinned }), 'pin');
    },
    markUnread: (chat) => run(() => session.setPrefs(chat.id, { marked_unread: true })),
    markRead: (chat) => {
      session.markRead(chat.id, true);
      return Promise.resolve(true);
    },
    clear: async (chat) => {
      if (await dialogs.confirm(`Clear this chat? Its messages are removed for you only, on all your devices.`, 'Clear chat')) {
        await run(() => session.clearChat(chat.id));
      }
    },
    remove: async (chat) => {
      const group = chat.kind === 'group';
      const text = group ? `Delete the group “${chatTitle(chat)}”? Its messages are removed for you, on all your devices.`
        : `Delete this chat with ${peerName(chat)}? Its messages are removed for you, on all your devices.`;
      if (!(await dialogs.confirm(text, group ? 'Delete group' : 'Delete chat'))) return;
      if (await run(() => session.deleteChat(chat.id)) && store.activeChatId === chat.id) ctx.onOpenChat(null);
    },
    exit: async (chat) => {
      if (await dialogs.confirm(`Exit “${chatTitle(chat)}”?`, 'Exit group')) await run(() => session.leave(chat.id), 'group');
    },
    block: async (chat) => {
      const name = peerName(chat);
      if (!(await dialogs.confirm(`Block ${name}? Blocked people can’t message you or see your last seen and profile photo.`, 'Block'))) return;
      if (await run(() => session.setBlocked(chat.peer.id, true))) toast(`${name} is blocked.`);
    },
    unblock: async (chat) => {
      const name = peerName(chat);
      if (await run(() => session.setBlocked(chat.peer.id, false))) toast(`${name} is unblocked.`);
    },
    report: async (chat) => {
      const group = chat.kind === 'group';
      const choice = await dialogs.report({
        title: group ? `Report “${chatTitle(chat)}”?` : `Report ${peerName(chat)}?`,
        text: group ? 'The last 5 messages in this group will be sent to this server’s admins. No one in the group is told.'
          : `The last 5 messages from ${peerName(chat)} will be sent to this server’s admins. ${peerName(chat)} isn’t told.`,
        option: group ? (chat.left_seq === undefined ? 'Exit the group' : null) : `Block ${peerName(chat)}`,
      });
      if (!choice) return;
      const body = group ? { chat: chat.id } : { user: chat.peer.id, chat: chat.id, block: choice.option };
      if (choice.reason) body.reason = choice.reason;
      const ok = await run(async () => {
        await session.report(body);
        if (!group && choice.option) await session.loadBlocked();
        if (group && choice.option) await session.leave(chat.id);
      });
      if (ok) toast(group ? 'Reported. Thank you.' : `${peerName(chat)} is reported${choice.option ? ' and blocked' : ''}.`);
    },
  };
  return actions;
}

/** The menu items of a chat (chat list, header). `extra`: items to put first. */
export function chatMenuItems(ctx, chat, extra = []) {
  const a = chatActions(ctx);
  const muted = isMuted(chat);
  const unread = (chat.unread || 0) > 0 || chat.marked_unread;
  const direct = chat.kind === 'direct' && chat.peer;
  const blocked = direct && ctx.store.blocked.has(chat.peer.id);
  return [
    ...extra,
    chat.archived
      ? { label: 'Unarchive chat', icon: 'archive', onSelect: () => a.archive(chat, false) }
      : { label: 'Archive chat', icon: 'archive', onSelect: () => a.archive(chat, true) },
    muted
      ? { label: 'Unmute notifications', icon: 'bell', onSelect: () => a.unmute(chat) }
      : { label: 'Mute notifications', icon: 'bell-off', onSelect: () => a.mute(chat) },
    chat.pinned
      ? { label: 'Unpin chat', icon: 'pin', onSelect: () => a.pin(chat, false) }
      : { label: 'Pin chat', icon: 'pin', onSelect: () => a.pin(chat, true) },
    unread
      ? { label: 'Mark as read', icon: 'check2', onSelect: () => a.markRead(chat) }
      : { label: 'Mark as unread', icon: 'dot', onSelect: () => a.markUnread(chat) },
    '-',
    direct ? (blocked
      ? { label: `Unblock ${ctx.store.nameOf(chat.peer.id)}`, icon: 'ban', onSelect: () => a.unblock(chat) }
      : { label: `Block ${ctx.store.nameOf(chat.peer.id)}`, icon: 'ban', danger: true, onSelect: () => a.block(chat) }) : null,
    { label: direct ? `Report ${ctx.store.nameOf(chat.peer.id)}` : 'Report group', icon: 'flag', danger: true, onSelect: () => a.report(chat) },
    { label: 'Clear chat', icon: 'eraser', onSelect: () => a.clear(chat) },
    chat.kind === 'group' && chat.left_seq === undefined
      ? { label: 'Exit group', icon: 'logout', danger: true, onSelect: () => a.exit(chat) }
      : { label: chat.kind === 'group' ? 'Delete group' : 'Delete chat', icon: 'trash', danger: true, onSelect: () => a.remove(chat) },
  ];
}
