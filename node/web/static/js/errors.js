// What went wrong, in words for the person using the client, and what they can do about it.
// Every error code of docs/protocol.md has its sentence here (MESSAGES), some a better one
// where the context says more (IN_CONTEXT); views never show the node's own message, which
// is written for developers. docs/web-client.md ("Errors") lists the same table.

/** code -> the sentence shown when nothing more specific applies. */
export const MESSAGES = {
  network: 'Can’t reach the server. Check your internet connection and try again.',
  http_error: 'The server had a problem with that. Try again in a moment.',
  bad_request: 'The server didn’t accept that. Reload the page and try again.',
  invalid_json: 'Something went wrong in this app. Reload the page and try again.',
  unknown_type: 'This app is older than the server. Reload the page to update it.',
  too_large: 'That’s too large for this server.',
  unsupported_media_type: 'This server doesn’t accept that kind of file.',
  quota_exceeded: 'You’ve uploaded as much as this server keeps for one person. Files you never sent are deleted after a while.',
  storage_full: 'The server is short of space and takes no files for now. Messages still work.',
  too_many_events: 'Something went wrong in this app. Reload the page and try again.',
  invalid_username: 'Usernames are 3 to 32 characters: letters a-z, digits, “_” and “.”, starting with a letter or digit.',
  weak_password: 'That password is too short.',
  username_taken: 'That username is taken. Try another one.',
  registration_closed: 'This server doesn’t accept new accounts.',
  unauthorized: 'You’ve been logged out. Log in again.',
  account_disabled: 'This account is disabled. Ask the server’s admin.',
  wrong_password: 'Your current password is wrong.',
  forbidden: 'You’re not allowed to do that here.',
  not_member: 'You’re no longer a member of this chat.',
  blocked: 'You can’t message this person.',
  not_found: 'That no longer exists.',
  conflict: 'That changed in the meantime. Try again.',
  group_full: 'This group is full.',
  edit_window_passed: 'This message is too old to edit.',
  timeout: 'That took too long. Check your connection and try again.',
  rate_limited: 'You’re doing that too often. Wait a moment and try again.',
  too_many_connections: 'Your account is open in too many tabs or devices. Close some of them.',
  not_hello: 'Something went wrong in this app. Reload the page and try again.',
  rejected: 'The server refused this message.',
  unavailable: 'The server is busy or restarting. Try again in a moment.',
  internal: 'Something went wrong on the server. Try again.',
};

/** context -> code -> a better sentence there. */
const IN_CONTEXT = {
  login: {
    unauthorized: 'Wrong username or password.',
    rate_limited: 'Too many attempts. Wait a minute and try again.',
  },
  password: {
    rate_limited: 'Too many wrong passwords. Wait a minute and try again.',
  },
  group: {
    forbidden: 'Only the group’s admins can do that.',
    not_found: 'That person doesn’t have an account here.',
    blocked: 'You can’t add someone who blocked you or whom you blocked.',
  },
  chat: {
    not_found: 'That person doesn’t have an account here any more.',
    blocked: 'You can’t start a chat with this person.',
  },
  pin: {
    conflict: 'You can only pin up to 3 chats.',
  },
  react: {
    not_found: 'That message no longer exists.',
    blocked: 'You can’t react to messages from this person.',
    not_member: 'You’re no longer a member of this chat.',
  },
  edit: {
    forbidden: 'You can only edit your own messages.',
    not_found: 'That message no longer exists.',
  },
  delete: {
    forbidden: 'You can only delete your own messages, or any message in a group you’re an admin of.',
    not_found: 'That message no longer exists.',
  },
};

/** Codes worth trying again as they are (the same request may work later). */
const RETRYABLE = new Set(['network', 'timeout', 'rate_limited', 'unavailable', 'internal', 'http_error', 'too_many_connections']);

let limits = {};

/** The node's limits (GET /api/info, the welcome): some sentences name them. */
export function setLimits(value) {
  limits = { ...limits, ...(value || {}) };
}

export function retryable(code) {
  return RETRYABLE.has(code);
}

/** The sentence for an error (an ApiError, an `error` event, or a code) in a context. */
export function errorText(err, context = '') {
  const code = typeof err === 'string' ? err : (err && err.code) || 'http_error';
  if (code === 'group_full' && limits.max_group_members) {
    return `This group is full: a group can have at most ${limits.max_group_members} members.`;
  }
  return (IN_CONTEXT[context] && IN_CONTEXT[context][code]) || MESSAGES[code] || MESSAGES.http_error;
}

// -- messages that could not be sent -------------------------------------------------------

/**
 * Why an outbox item failed and what may be done: {text, actions} with actions among
 * 'edit' (back to the composer), 'unblock' (then send again), 'retry', 'discard'.
 * `peer`: the other person's name in a 1-1 chat; `youBlocked`: whether the user blocked them.
 */
export function sendFailure(item, { peer = null, youBlocked = false } = {}) {
  const code = item.code || 'http_error';
  const text = item.kind === 'text';
  switch (code) {
    case 'too_large':
      return { text: 'Not sent: this message is too long.', actions: text ? ['edit', 'discard'] : ['discard'] };
    case 'blocked':
      if (youBlocked) return { text: `Not sent: you blocked ${peer || 'this person'}.`, actions: ['unblock', 'discard'] };
      return { text: `Not sent: ${peer || 'this person'} can’t receive your messages.`, actions: ['discard'] };
    case 'not_member':
      return { text: 'Not sent: you’re no longer a member of this group.', actions: ['discard'] };
    case 'forbidden': case 'rejected':
      return { text: 'Not sent: the server doesn’t allow this message here.', actions: text ? ['edit', 'discard'] : ['discard'] };
    case 'not_found':
      return {
        text: item.media ? 'Not sent: the file is no longer on the server. Attach it again.' : 'Not sent: the message it answers no longer exists.',
        actions: ['discard'],
      };
    default:
      if (retryable(code)) return { text: `Not sent. ${errorText(code)}`, actions: ['retry', 'discard'] };
      return { text: `Not sent. ${errorText(code)}`, actions: text ? ['edit', 'discard'] : ['discard'] };
  }
}

// -- uploads -------------------------------------------------------------------------------

/** A kind of file in words, by its type: "photo", "PDF document", "program". */
const KINDS = [
  [/^image\/gif$/, 'GIF'],
  [/^image\/(heic|heif)$/, 'HEIC photo'],
  [/^image\/svg/, 'SVG drawing'],
  [/^image\//, 'photo'],
  [/^video\//, 'video'],
  [/^audio\//, 'audio recording'],
  [/^application\/pdf$/, 'PDF document'],
  [/^application\/(zip|gzip|x-7z-compressed|x-tar|x-rar-compressed|x-bzip2|x-xz|zstd)$/, 'archive'],
  [/^application\/(x-msdownload|x-executable|x-deb|x-rpm|x-sharedlib|vnd\.microsoft\.portable-executable)$/, 'program'],
  [/wordprocessing|msword|opendocument\.text|rtf/, 'text document'],
  [/spreadsheet|ms-excel/, 'spreadsheet'],
  [/presentation|ms-powerpoint/, 'presentation'],
  [/^text\/plain$/, 'text file'],
  [/^text\/html$/, 'web page'],
];

export function fileKind(mime) {
  const found = KINDS.find(([pattern]) => pattern.test(mime || ''));
  return found ? found[1] : 'file';
}

function plural(kind) {
  return kind === 'file' ? 'files of this kind' : `${kind}s`;
}

function megabytes(bytes) {
  const mb = bytes / (1024 * 1024);
  return mb >= 10 ? `${Math.round(mb)} MB` : `${Math.round(mb * 10) / 10} MB`;
}

/**
 * Why an upload was refused or failed, and whether trying again could help:
 * {text, retry}. The node's message may name the detected type ("image/heic uploads ...")
 * and the limit ("limited to 20971520 bytes"); the file's own type is the fallback.
 */
export function uploadFailure(err, file) {
  const name = `“${file.name || 'the file'}”`;
  const detected = /^([\w.+-]+\/[\w.+-]+) uploads are not accepted/.exec(err.message || '');
  const kind = fileKind(detected ? detected[1] : file.type);
  switch (err.code) {
    case 'too_large': {
      const limit = /limited to (\d+) bytes/.exec(err.message || '');
      const upTo = limit ? `: ${plural(kind)} can be up to ${megabytes(Number(limit[1]))} here` : ' for this server';
      return { text: `${name} is too large to send (${megabytes(file.size)})${upTo}.`, retry: false };
    }
    case 'unsupported_media_type':
      return { text: `${name} can’t be sent: this server doesn’t accept ${plural(kind)}.`, retry: false };
    case 'bad_request':
      return { text: `${name} can’t be sent: it looks like a ${kind} but can’t be opened. It may be damaged.`, retry: false };
    case 'network':
      return { text: `The upload of ${name} was interrupted. Check your connection.`, retry: true };
    case 'unauthorized':
      return { text: MESSAGES.unauthorized, retry: false };
    default:
      return { text: `${name} wasn’t sent. ${errorText(err)}`, retry: retryable(err.code) };
  }
}

/** A file refused before uploading, or null: empty files. */
export function uploadProblem(file) {
  if (!file.size) return `“${file.name || 'The file'}” is empty, so there is nothing to send.`;
  return null;
}

// -- the connection ------------------------------------------------------------------------

/** Close codes (docs/protocol.md) that deserve their own words while reconnecting. */
export function closeText(code) {
  switch (code) {
    case 4009: return MESSAGES.too_many_connections;
    case 1001: return 'The server is restarting.';
    default: return '';
  }
}

/** Why the session ended: 4003 is a revoked device (docs/protocol.md, Tokens; docs/admin.md), anything else an invalid login. */
export function sessionEndText(code) {
  return code === 4003 ? 'You were logged out: from another device, by a password change, by the server’s admin, or because this login reached its maximum age. Log in again.'
    : 'Your session has ended. Log in again.';
}
