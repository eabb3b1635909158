// Messages waiting for their ack, kept in localStorage so that neither a lost connection
// nor a closed tab loses them. Each has a client_msg_id: the node stores a message once
// per id, so sending one again after a lost ack is safe.

export class Outbox {
  constructor(key) {
    this.key = key;
    this.items = [];
    try {
      const saved = JSON.parse(localStorage.getItem(key) || '[]');
      if (Array.isArray(saved)) this.items = saved.map((item) => ({ ...item, state: item.state === 'failed' ? 'failed' : 'queued' }));
    } catch (err) {
      this.items = [];
    }
  }

  save() {
    try {
      if (this.items.length) localStorage.setItem(this.key, JSON.stringify(this.items));
      else localStorage.removeItem(this.key);
    } catch (err) {
      console.warn('the outbox could not be saved', err);
    }
  }

  add(item) {
    this.items.push(item);
    this.save();
  }

  get(clientMsgId) {
    return this.items.find((item) => item.client_msg_id === clientMsgId);
  }

  update(clientMsgId, changes) {
    const item = this.get(clientMsgId);
    if (item) {
      Object.assign(item, changes);
      this.save();
    }
    return item;
  }

  remove(clientMsgId) {
    const item = this.get(clientMsgId);
    if (item) {
      this.items = this.items.filter((other) => other !== item);
      this.save();
    }
    return item;
  }

  waiting() {
    return this.items.filter((item) => item.state !== 'failed');
  }

  forChat(chatId) {
    return this.items.filter((item) => item.chat === chatId);
  }

  clear() {
    this.items = [];
    localStorage.removeItem(this.key);
  }
}
