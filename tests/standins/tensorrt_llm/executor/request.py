"""Stand-in: tensorrt_llm.executor.request.LoRARequest(lora_name, lora_int_id, lora_path)."""
from dataclasses import dataclass


@dataclass
class LoRARequest:
    lora_name: str
    lora_int_id: int
    lora_path: str
