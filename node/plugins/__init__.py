"""Built-in plugins. They use only the public API a third-party plugin has: the hooks in
node/hookspecs.py and the `node` object they are given (see docs/plugins.md)."""
