// Times, dates and sizes as people read them.

// 'numeric' hours: "3:15 AM" where the locale uses 12 hours, "03:15" or "3:15" as it writes 24.
const timeFormat = new Intl.DateTimeFormat(undefined, { hour: 'numeric', minute: '2-digit' });
const weekdayFormat = new Intl.DateTimeFormat(undefined, { weekday: 'long' });
const dateFormat = new Intl.DateTimeFormat(undefined, { day: 'numeric', month: 'long', year: 'numeric' });
const shortDateFormat = new Intl.DateTimeFormat(undefined, { day: 'numeric', month: 'short', year: '2-digit' });

const DAY = 24 * 3600 * 1000;

function startOfDay(ts) {
  const d = new Date(ts);
  d.setHours(0, 0, 0, 0);
  return d.getTime();
}

function daysAgo(ts, now = Date.now()) {
  return Math.round((startOfDay(now) - startOfDay(ts)) / DAY);
}

export const time = (ts) => timeFormat.format(ts);

export function dayKey(ts) {
  const d = new Date(ts);
  return `${d.getFullYear()}-${d.getMonth() + 1}-${d.getDate()}`;
}

/** The label of a day separator: Today, Yesterday, Tuesday, 3 March 2026. */
export function dayLabel(ts) {
  const ago = daysAgo(ts);
  if (ago === 0) return 'Today';
  if (ago === 1) return 'Yesterday';
  if (ago > 1 && ago < 7) return weekdayFormat.format(ts);
  return dateFormat.format(ts);
}

/** The time in the chat list: 14:05, Yesterday, Tuesday, 03/03/26. */
export function listTime(ts) {
  const ago = daysAgo(ts);
  if (ago === 0) return time(ts);
  if (ago === 1) return 'Yesterday';
  if (ago > 1 && ago < 7) return weekdayFormat.format(ts);
  return shortDateFormat.format(ts);
}

/** A moment in the recent past: today at 14:05, yesterday at 09:12, 03/03/26 at 18:40. */
export function when(ts) {
  const ago = daysAgo(ts);
  if (ago === 0) return `today at ${time(ts)}`;
  if (ago === 1) return `yesterday at ${time(ts)}`;
  return `${shortDateFormat.format(ts)} at ${time(ts)}`;
}

export function lastSeen(ts) {
  return ts ? `last seen ${when(ts)}` : 'offline';
}

export function fileSize(bytes) {
  if (bytes < 1024) return `${bytes} B`;
  if (bytes < 1024 * 1024) return `${(bytes / 1024).toFixed(0)} KB`;
  return `${(bytes / 1024 / 1024).toFixed(1)} MB`;
}

export const TTL_CHOICES = [
  [0, 'Off'],
  [30, '30 seconds'],
  [300, '5 minutes'],
  [3600, '1 hour'],
  [86400, '24 hours'],
  [7 * 86400, '7 days'],
  [90 * 86400, '90 days'],
];

export function ttlLabel(seconds) {
  const known = TTL_CHOICES.find(([value]) => value === seconds);
  if (known) return known[1];
  const plural = (n, unit) => `${n} ${unit}${n === 1 ? '' : 's'}`;
  if (seconds % 86400 === 0) return plural(seconds / 86400, 'day');
  if (seconds % 3600 === 0) return plural(seconds / 3600, 'hour');
  if (seconds % 60 === 0) return plural(seconds / 60, 'minute');
  return plural(seconds, 'second');
}

export function duration(seconds) {
  if (!isFinite(seconds)) return '';
  const s = Math.round(seconds);
  return `${Math.floor(s / 60)}:${String(s % 60).padStart(2, '0')}`;
}
