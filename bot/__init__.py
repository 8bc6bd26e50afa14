"""bot: the Flask app (chat API, widget) and the model runtime that serves the replies.

Build the app with ``bot.app.create_app``; the model lives in ``bot.runtime``.
"""
