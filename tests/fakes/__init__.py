"""Fakes that speak real wire protocols, so tests exercise the real client libraries.

``llm_servers`` serves the OpenAI (chat completions, Responses) and Anthropic
(Messages) HTTP APIs with scriptable replies and failures; ``tool_ctx`` builds
a ``ToolContext`` that records what a tool emits.
"""
