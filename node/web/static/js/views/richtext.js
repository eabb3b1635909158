// WhatsApp-style formatting, made into DOM nodes (never parsed as HTML): *bold*, _italic_,
// ~strike~, `inline code` and ```code blocks```. Web addresses become links.
//
// The rules, as WhatsApp has them: a marker opens after the start, a space or punctuation
// and before a non-space; it closes after a non-space and before the end, a space or
// punctuation, on the same line. Markers nest (*_both_*). Nothing inside code is formatted;
// a marker inside a web address is part of the address.

import { h } from '../dom.js';

const URL_PATTERN = /\bhttps?:\/\/[^\s<>"]+[^\s<>".,;:!?)\]*_~`]/g;
const TAGS = { '*': 'strong', _: 'em', '~': 's' };
const WORD = /[\p{L}\p{N}]/u;
const SPACE = /\s/;

/** The nodes of a message's text, formatted. */
export function richText(text) {
  const out = [];
  const block = /```([\s\S]+?)```/g;
  let last = 0;
  for (const match of text.matchAll(block)) {
    if (match.index > last) out.push(...inlineCode(text.slice(last, match.index)));
    const code = match[1].replace(/^\n/, '').replace(/\n$/, '');
    out.push(h('pre', { class: 'code-block' }, h('code', null, code)));
    last = match.index + match[0].length;
  }
  if (last < text.length) out.push(...inlineCode(text.slice(last)));
  return out;
}

/** The text as it reads once formatted, markers gone (previews, quotes, notifications). */
export function plainText(text) {
  const holder = document.createElement('div');
  holder.append(...richText(text));
  return holder.textContent;
}

function inlineCode(text) {
  const out = [];
  const pattern = /`([^`\n]+)`/g;
  let last = 0;
  for (const match of text.matchAll(pattern)) {
    if (!opensAt(text, match.index) || !closesAt(text, match.index + match[0].length - 1)) continue;
    if (match.index > last) out.push(...styled(text.slice(last, match.index)));
    out.push(h('code', { class: 'code' }, match[1]));
    last = match.index + match[0].length;
  }
  if (last < text.length) out.push(...styled(text.slice(last)));
  return out;
}

/** *bold*, _italic_ and ~strike~ in a piece of text without code. */
function styled(text) {
  // Whether a marker can close does not depend on where it opened: find those places once,
  // so that a long line with many would-be markers costs a search each, not a scan each.
  const linked = new Uint8Array(text.length);
  for (const m of text.matchAll(URL_PATTERN)) linked.fill(1, m.index, m.index + m[0].length);
  const closers = { '*': [], _: [], '~': [] };
  const lineEnd = new Int32Array(text.length + 1);
  let next = text.length;
  for (let i = text.length - 1; i >= 0; i--) {
    if (text[i] === '\n') next = i;
    lineEnd[i] = next;
  }
  for (let i = 0; i < text.length; i++) {
    if (closers[text[i]] && !linked[i] && closesAt(text, i)) closers[text[i]].push(i);
  }
  return spans({ text, linked, closers, lineEnd }, 0, text.length);
}

function spans(ctx, start, end) {
  const { text } = ctx;
  const out = [];
  let plain = start;
  let i = start;
  while (i < end) {
    const marker = text[i];
    const close = TAGS[marker] && !ctx.linked[i] && opensAt(text, i) ? closing(ctx, i, end) : -1;
    if (close === -1) {
      i += 1;
      continue;
    }
    if (i > plain) out.push(...links(text.slice(plain, i)));
    out.push(h(TAGS[marker], null, spans(ctx, i + 1, close)));
    i = close + 1;
    plain = i;
  }
  if (end > plain) out.push(...links(text.slice(plain, end)));
  return out;
}

/** Where the marker opened at `open` closes: the first closer after it, on its line, before `end`; or -1. */
function closing(ctx, open, end) {
  const list = ctx.closers[ctx.text[open]];
  let lo = 0;
  let hi = list.length;
  while (lo < hi) { // the first closer at open + 2 or later
    const mid = (lo + hi) >> 1;
    if (list[mid] < open + 2) lo = mid + 1;
    else hi = mid;
  }
  const j = lo < list.length ? list[lo] : -1;
  return j !== -1 && j < end && j < ctx.lineEnd[open] ? j : -1;
}

function opensAt(text, i) {
  const before = text[i - 1];
  const after = text[i + 1];
  return (before === undefined || !WORD.test(before)) && after !== undefined && !SPACE.test(after) && after !== text[i];
}

function closesAt(text, i) {
  const before = text[i - 1];
  const after = text[i + 1];
  return before !== undefined && !SPACE.test(before) && (after === undefined || !WORD.test(after));
}

function links(text) {
  const out = [];
  let last = 0;
  for (const match of text.matchAll(URL_PATTERN)) {
    if (match.index > last) out.push(text.slice(last, match.index));
    out.push(h('a', { href: match[0], target: '_blank', rel: 'noopener noreferrer' }, match[0]));
    last = match.index + match[0].length;
  }
  if (last < text.length) out.push(text.slice(last));
  return out;
}
