"""ProxyV building blocks: the per-forward plan, the proxy/guided-update modules, the decoder layer."""
