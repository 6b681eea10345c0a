"""Following an upstream package index: client, events, the sync engine, local folders."""
