// Media: signed URLs for <img>, <video> and <audio> (downloads need auth, tags cannot
// send a header), cached until shortly before they expire, or until the client moves to
// another node (the URLs name the node that signed them).

const cache = new Map(); // media id -> Promise of {url, thumbnail_url, expires}

function expiryMs(expires) {
  if (!expires) return Date.now() + 5 * 60 * 1000;
  return expires > 1e12 ? expires : expires * 1000; // ms or seconds since the epoch
}

export function signedUrls(api, mediaId) {
  const cached = cache.get(mediaId);
  if (cached && cached.until > Date.now() && (!cached.node || cached.node === api.current)) return cached.promise;
  const entry = { until: Infinity, node: null, promise: null };
  entry.promise = api.signedMedia(mediaId).then((signed) => {
    entry.until = expiryMs(signed.expires) - 30 * 1000;
    entry.node = signed.node;
    return signed;
  }, (err) => {
    cache.delete(mediaId);
    throw err;
  });
  cache.set(mediaId, entry);
  return entry.promise;
}

export function describeMedia(kind) {
  return { image: 'Photo', video: 'Video', audio: 'Audio', file: 'File' }[kind] || 'Attachment';
}
