"""The ``llm.chat`` tool: Anthropic and OpenAI (and OpenAI-compatible servers) through their official SDKs.

Public surface: ``LlmChatTool`` / ``make_llm_tool(settings)`` (registered by
``supervisor.tools.registry``), its argument model ``LlmChatArgs``, the price
table ``LlmPricing`` and the per-provider ``CircuitBreaker``.
"""

from supervisor.tools.llm.args import ChatMessage, LlmChatArgs, ToolCall, ToolSpec
from supervisor.tools.llm.breaker import CircuitBreaker
from supervisor.tools.llm.pricing import LlmPricing, Price
from supervisor.tools.llm.tool import LlmChatTool, make_llm_tool

__all__ = [
    "ChatMessage",
    "CircuitBreaker",
    "LlmChatArgs",
    "LlmChatTool",
    "LlmPricing",
    "Price",
    "ToolCall",
    "ToolSpec",
    "make_llm_tool",
]
