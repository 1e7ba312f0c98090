"""proxyv: LLaVA-NeXT-style multimodal LLMs with ProxyV proxy vision tokens."""
