"""Reproduce, time and audit fast CIFAR-10 ResNet training, the l2-regularised linear
autoencoder, and what LLM chat assistants claimed about both."""

__version__ = "0.1.0"
