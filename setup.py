"""Packaging for proxyv: the `llava` package with the ProxyV decoder.

torch is required but never pinned to a different build than the one installed: the range below
admits any torch 2.x from 2.6 (FlexAttention and `torch.compiler.set_stance`), so pip keeps the wheel that is already there (CPU or CUDA).
"""

from setuptools import find_packages, setup

setup(
    name="proxyv",
    version="0.1.0",
    description="LLaVA-NeXT-style multimodal LLMs with ProxyV (ICML 2025) proxy vision tokens",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["llava", "llava.*"]),
    install_requires=[
        "torch>=2.6,<3",
        "transformers>=5.20,<5.24",
        "tokenizers>=0.22",
        "safetensors>=0.4",
        "accelerate>=1.0",
        "pillow>=10.1",
        "numpy>=1.26",
        "tqdm",
    ],
    extras_require={
        "train": ["deepspeed>=0.16", "peft>=0.13", "accelerate>=1.0", "wandb",
                  "matplotlib>=3.8"],  # matplotlib: the small-scale study's plot
        "flash": ["flash-attn>=2.6"],
        "serve": ["gradio>=6,<7"],  # the web demo (llava.serve.gradio_web_server); tested with 6.31
        "dev": ["pytest>=8", "ruff>=0.6"],
    },
)
