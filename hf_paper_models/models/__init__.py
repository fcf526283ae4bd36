"""One file per paper (config, size table, modules, heads) plus the shared blocks they import."""
