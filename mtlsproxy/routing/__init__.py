"""The wiring: a listener's configuration turned into routes ready to serve (TLS contexts,
server credentials, compiled policy, ticket keys) and the SNI table that picks one. It sits
above engine, policy and config and joins them; nothing below imports it."""
