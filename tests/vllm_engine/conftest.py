"""The vLLM rollout engine against a real vLLM (``make test-vllm``, in ``.venv-vllm``).

The directory is not named ``tests/vllm``: pytest puts ``tests/`` on ``sys.path``, where a ``vllm``
directory would be imported as a namespace package wherever vLLM is not installed.

vLLM's engine must run in this process (``VLLMEngine.sync_weights`` hands it tensors directly), and
nothing may reach a model hub: both are set before vLLM is imported."""

import os

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
