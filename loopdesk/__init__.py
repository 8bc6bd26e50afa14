"""loopdesk: a customer-service chatbot that learns from its customers' ratings."""

__version__ = "0.1.0"
