"""The broker on a store: its state in Valkey or Redis, so that several servers serve
one fleet and the loss of one loses nothing (docs/store.md)."""
