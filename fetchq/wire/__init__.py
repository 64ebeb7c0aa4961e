"""What crosses the network: the API both sides speak, records, codec, transport,
login, TLS, and the client.  Client processes load this package and nothing of
``fetchq.server``."""
