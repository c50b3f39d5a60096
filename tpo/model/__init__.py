"""Model: vision encoder, connector, LLM with task tokens, the assembled MLLM, builders."""
