"""Web pages of dbmail: the comm panel (staff) and the public unsubscribe and web-version pages."""
