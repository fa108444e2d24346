"""Steered chat: conversations, the replies streaming now, and their API and pages."""
