"""The chat core: ids, accounts, chats, sessions and the wire protocol."""
