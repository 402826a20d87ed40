"""Thin command-line programs over ``dllm_jax``; run as ``python -m experiments.<name>``."""
