"""Shared sizes for the tests' from-scratch models (a ~40K-parameter LLaMA) and CPU runtime flags."""
import json

TINY = json.dumps({"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 2,
                   "intermediate_size": 64, "max_position_embeddings": 128, "tie_word_embeddings": True})
RUNTIME = ["--threads", "1", "--device", "cpu"]
