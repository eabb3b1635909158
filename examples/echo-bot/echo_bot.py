"""A chatnode plugin: a bot user, "echobot", that answers "/echo <text>" with <text>.

Open a 1-1 chat with echobot (or add it to a group) and send "/echo hello".
"""

from __future__ import annotations

import attrs

from node import Message, PluginContext, hookimpl


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
    async def startup(self, ctx: PluginContext, nursery):
        self.settings = ctx.settings
        bot = await ctx.create_service_user(self.settings.username, display_name="Echo Bot")
        self.bot_id = bot.id

    @hookimpl
    async def on_message_stored(self, ctx: PluginContext, message: Message):
        text = message.text or ""
        if message.kind != "text" or message.sender == self.bot_id or not text.startswith(self.settings.prefix):
            return
        chat = await ctx.chat(message.chat_id)
        if chat is None or self.bot_id not in chat.member_ids:
            return  # not in this chat
        await ctx.post_message(self.bot_id, message.chat_id, {"kind": "text", "text": text[len(self.settings.prefix):],
                                                               "reply_to": str(message.id)})
        ctx.count("answered")
        self.answered += 1
