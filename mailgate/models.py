"""Inbound mail models arrive with the mailgate issue."""
