"""练习 ex424（进阶）：批量贪心生成 (batched greedy generation)——参考答案。"""

import torch


@torch.no_grad()
def batched_greedy(
    model, prompts: list[list[int]], max_new_tokens: int, pad_id: int, eos_id: int | None = None
) -> list[list[int]]:
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("prompts: every prompt needs at least one token")
    B, T = len(prompts), max(len(p) for p in prompts)
    ids = torch.full((B, T), pad_id, dtype=torch.long)
    mask = torch.zeros((B, T), dtype=torch.long)
    for i, p in enumerate(prompts):  # left padding: the last token is real
        ids[i, T - len(p) :] = torch.tensor(p, dtype=torch.long)
        mask[i, T - len(p) :] = 1
    pos = (mask.cumsum(-1) - 1).clamp(min=0)  # positions count real tokens only
    out = model(ids, attention_mask=mask, position_ids=pos, use_cache=True)
    cache = out.past_key_values
    finished = torch.zeros(B, dtype=torch.bool)
    results: list[list[int]] = [[] for _ in range(B)]
    for step in range(max_new_tokens):
        nxt = out.logits[:, -1].argmax(-1)
        nxt = torch.where(finished, torch.full_like(nxt, pad_id), nxt)  # finished rows: padding
        for i in range(B):
            if not finished[i]:
                results[i].append(int(nxt[i]))
                if eos_id is not None and int(nxt[i]) == eos_id:
                    finished[i] = True
        if bool(finished.all()) or step == max_new_tokens - 1:
            break
        next_pos = mask.sum(-1, keepdim=True)  # real tokens so far = the new position
        mask = torch.cat([mask, torch.ones((B, 1), dtype=torch.long)], dim=1)
        out = model(nxt[:, None], attention_mask=mask, position_ids=next_pos, past_key_values=cache, use_cache=True)
        cache = out.past_key_values
    return results
