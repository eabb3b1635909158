"""A chatnode plugin: a bot user, "echobot", that answers "/echo <text>" with <text>.

Open a 1-1 chat with echobot (or add it to a group) and send "/echo hello".
"""

from __future__ import annotations

import attrs

from node import hookimpl


@attrs.frozen
class EchoSettings:
    """[plugins.echo_bot] in config.toml."""

    username: str = "echobot"
    prefix: str = "/echo "


class EchoBot:
    name = "echo_bot"

    def __init__(self) -> None:
        self.bot_id: int | None = None
        self.settings = EchoSettings()
        self.answered = 0

    @hookimpl
    def register_settings(self):
        return ("echo_bot", EchoSettings)

    @hookimpl
    async def startup(self, node, nursery):
        self.settings = node.plugins.settings("echo_bot")
        bot = await node.accounts.create_service_user(self.settings.username, display_name="Echo Bot")
        self.bot_id = int(bot["id"])

    @hookimpl
    async def on_message_stored(self, node, chat_id, message):
        text = message.get("text") or ""
        if message["kind"] != "text" or message["from"] == str(self.bot_id) or not text.startswith(self.settings.prefix):
            return
        chat = node.chats.get(chat_id)
        if chat is None or chat.member(self.bot_id) is None:
            return  # not in this chat
        await node.post_message(self.bot_id, chat_id, {"kind": "text", "text": text[len(self.settings.prefix):],
                                                       "reply_to": message["id"]})
        self.answered += 1
