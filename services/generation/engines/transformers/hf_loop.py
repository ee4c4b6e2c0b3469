"""Continuous batching over transformers' own forward (any architecture, CPU or GPU).

Decode everything active one step at a time with one KV cache; requests that arrive meanwhile are
prefilled and join at the next step (their cache left-padded to the batch's length), finished ones
leave at once. Requests are the scheduler's business (scheduler.py); this loop owns the cache.
"""

from __future__ import annotations

from .requests import Request
from .scheduler import Scheduler


class HFLoop:
    def __init__(self, scheduler: Scheduler, forward, device: str, cache_arg: str):
        import torch

        self.scheduler, self.forward, self.device, self.cache_arg = scheduler, forward, device, cache_arg
        self.torch = torch

    def serve(self, new: list[Request]) -> None:
        torch, s = self.torch, self.scheduler
        active: list[Request] = []
        cache = mask = positions = logits = None
        with torch.inference_mode():
            while True:
                s.flush()
                new = [r for r in new if not s.retire(r)]  # some left before their first step
                if new:
                    c, m, p, lg = self._prefill(new)
                    if active:
                        cache, mask = self._merge(cache, mask, c, m)
                        positions, logits = torch.cat([positions, p]), torch.cat([logits, lg])
                    else:
                        cache, mask, positions, logits = c, m, p, lg
                    active.extend(new)
                    s.report(len(active), len(active))
                if not active:
                    return
                next_ids = s.step(active, logits)
                keep = [row for row, r in enumerate(active) if not r.done]
                if len(keep) < len(active):
                    index = torch.tensor(keep, dtype=torch.long, device=self.device)
                    active[:] = [active[row] for row in keep]
                    next_ids = [next_ids[row] for row in keep]
                    s.report(len(active), 0)
                    if not active:
                        cache = None
                        new = s.admit(s.max_batch_size)
                        continue
                    cache.batch_select_indices(index)
                    mask, positions = mask[index], positions[index]
                step_ids = torch.tensor(next_ids, device=self.device).unsqueeze(1)
                mask = torch.cat([mask, torch.ones_like(step_ids)], dim=1)
                positions = positions + 1
                logits = self.forward(active, input_ids=step_ids, attention_mask=mask, position_ids=positions,
                                      **{self.cache_arg: cache})
                new = s.admit(s.max_batch_size - len(active))

    def _prefill(self, batch: list[Request]):
        """Left-padded prompts through the model: -> (cache, mask, last positions, next-token logits)."""
        torch = self.torch
        from transformers import DynamicCache

        width = max(len(r.prompt_ids) for r in batch)
        ids = torch.full((len(batch), width), self.scheduler.pad_id, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, r in enumerate(batch):  # left padding: every prompt ends at the last column
            ids[row, width - len(r.prompt_ids):] = torch.tensor(r.prompt_ids)
            mask[row, width - len(r.prompt_ids):] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        cache = DynamicCache()
        logits = self.forward(batch, input_ids=ids, attention_mask=mask, position_ids=positions,
                              **{self.cache_arg: cache})
        return cache, mask, positions[:, -1:], logits

    def _merge(self, cache, mask, new_cache, new_mask):
        """Two batches' caches into one: the shorter is left-padded (masked out) to the longer."""
        torch = self.torch
        width = max(mask.shape[1], new_mask.shape[1])

        def pad(t, n):
            return t if n == 0 else torch.cat([t.new_zeros(*t.shape[:2], n, *t.shape[3:]), t], dim=2)

        grow_old, grow_new = width - mask.shape[1], width - new_mask.shape[1]
        for old, fresh in zip(cache.layers, new_cache.layers, strict=True):
            old.keys = torch.cat([pad(old.keys, grow_old), pad(fresh.keys, grow_new)])
            old.values = torch.cat([pad(old.values, grow_old), pad(fresh.values, grow_new)])
        mask = torch.cat([torch.nn.functional.pad(mask, (grow_old, 0)),
                          torch.nn.functional.pad(new_mask, (grow_new, 0))])
        return cache, mask
