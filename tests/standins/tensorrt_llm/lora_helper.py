"""Stand-in: tensorrt_llm.lora_helper.LoraConfig."""
from dataclasses import dataclass


@dataclass
class LoraConfig:
    max_lora_rank: int = 64
    max_loras: int = 4
