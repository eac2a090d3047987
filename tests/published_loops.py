"""Plain re-statements of the published decoding loops, used as test oracles.

Written in our own words from the behaviour of the reference code (see
docs/reference-equivalence.md for repository, file and function of each), deliberately in the
reference's own shape: one loop per block, per-row Python loops, no plugins. Temperature 0 only.
``fn(ids) -> logits`` is a plain callable over the full canvas; each returns ``(x, nfe)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

NEG_INF = float("-inf")


def _llada_schedule(masked: int, steps: int) -> list[int]:
    base, extra = divmod(masked, steps)
    return [base + (1 if i < extra else 0) for i in range(steps)]


def llada_generate(fn, prompt, *, steps, gen_length, block_length, mask_id):
    """LLaDA ``generate.py::generate`` with ``remasking='low_confidence'``, temperature 0.

    Steps are split evenly over blocks; a block's masked count is spread over its steps (the
    remainder to the first steps); each step commits the ``k`` open positions of the current
    block with the highest softmax probability of their argmax token (``torch.topk``). NFE is
    always ``steps``.
    """
    b, p = prompt.shape
    x = torch.cat([prompt, torch.full((b, gen_length), mask_id)], dim=1)
    num_blocks = gen_length // block_length
    per_block = steps // num_blocks
    nfe = 0
    for block in range(num_blocks):
        lo, hi = p + block * block_length, p + (block + 1) * block_length
        schedules = [_llada_schedule(int((x[row, lo:hi] == mask_id).sum()), per_block) for row in range(b)]
        for step in range(per_block):
            masked = x == mask_id
            logits = fn(x)
            nfe += 1
            x0 = logits.argmax(-1)
            probs = F.softmax(logits, dim=-1)  # the model's dtype
            conf = probs.gather(-1, x0[..., None]).squeeze(-1)
            conf[:, hi:] = NEG_INF
            x0 = torch.where(masked, x0, x)
            conf = torch.where(masked, conf, torch.full_like(conf, NEG_INF))
            for row in range(b):
                k = schedules[row][step]
                chosen = torch.topk(conf[row], k=k).indices
                x[row, chosen] = x0[row, chosen]
    return x, nfe


def fast_dllm_generate(fn, prompt, *, gen_length, block_length, mask_id, threshold=None, factor=None):
    """Fast-dLLM ``llada/generate.py::generate`` (no cache), temperature 0.

    ``threshold``: per step, rank the block's open positions with ``torch.topk`` by the float64
    softmax probability of the argmax token; keep the first, drop every later one below the
    threshold. ``factor``: the n-th most confident position needs ``1 - factor / (n + 1)``
    (the first always passes); the count stops at the first failure, and a stop at the very
    first or very last index is moved one further. The block loop runs until the block has no
    mask (batch-wide); NFE counts every forward.
    """
    b, p = prompt.shape
    x = torch.cat([prompt, torch.full((b, gen_length), mask_id)], dim=1)
    nfe = 0
    for block in range(gen_length // block_length):
        lo, hi = p + block * block_length, p + (block + 1) * block_length
        while bool((x[:, lo:hi] == mask_id).any()):
            masked = x == mask_id
            masked[:, hi:] = False
            logits = fn(x)
            nfe += 1
            x0 = logits.argmax(-1)
            conf = F.softmax(logits.to(torch.float64), dim=-1).gather(-1, x0[..., None]).squeeze(-1)
            x0 = torch.where(masked, x0, x)
            conf = torch.where(masked, conf, torch.full_like(conf, NEG_INF))
            for row in range(b):
                n = int(masked[row].sum())
                if n == 0:
                    continue
                if factor is None:
                    order = torch.topk(conf[row], k=n).indices
                    keep = [order[0]] + [i for i in order[1:] if conf[row, i] >= threshold]
                    chosen = torch.stack(keep)
                else:
                    ranked = torch.sort(conf[row][masked[row]], descending=True).values
                    limits = [-1.0] + [1 - factor / (m + 1) for m in range(2, n + 1)]
                    top = 0
                    for top in range(n):
                        if ranked[top] < limits[top]:
                            break
                    if top in (0, n - 1):
                        top += 1
                    chosen = torch.topk(conf[row], k=top).indices
                x[row, chosen] = x0[row, chosen]
    return x, nfe


def dinfer_credit_generate(fn, prompt, *, gen_length, block_length, mask_id, threshold=0.9,
                           alpha=0.7, beta=0.8, gamma=0.2):
    """dInfer ``CreditThresholdParallelDecoder`` in a plain block loop (no cache), temperature 0.

    Per block a fresh float32 credit table ``(B, L, V)``; every step after the block's first
    multiplies it by ``beta``, then adds ``p_top1 ** gamma`` (float32 softmax of the raw block
    logits) at each masked position's argmax token. Fused logits ``logits + alpha * log(credit
    + 1)`` give both the tokens and the float32 confidences; a masked position commits when its
    confidence is at least ``min(threshold, row best - 1e-5)``.
    """
    b, p = prompt.shape
    x = torch.cat([prompt, torch.full((b, gen_length), mask_id)], dim=1)
    nfe = 0
    for block in range(gen_length // block_length):
        lo, hi = p + block * block_length, p + (block + 1) * block_length
        credit, first = None, True
        while bool((x[:, lo:hi] == mask_id).any()):
            logits = fn(x)[:, lo:hi]
            nfe += 1
            masked = x[:, lo:hi] == mask_id
            if credit is None:
                credit = torch.zeros(logits.shape, dtype=torch.float32)
            if not first:
                credit = credit * beta
            first = False
            probs = F.softmax(logits.to(torch.float32), dim=-1)
            top_p, top_i = probs.max(-1)
            credit = credit.scatter_add(2, top_i[..., None], (top_p.pow(gamma) * masked.float())[..., None])
            fused = logits + alpha * torch.log(credit + 1)
            x0 = fused.argmax(-1)
            conf = F.softmax(fused.to(torch.float32), dim=-1).gather(-1, x0[..., None]).squeeze(-1)
            conf = torch.where(masked, conf, torch.full_like(conf, NEG_INF))
            bar = (conf.max(dim=1).values - 1e-5).clamp(-1000, threshold)[:, None]
            commit = (conf >= bar) & masked
            x[:, lo:hi] = torch.where(commit, x0, x[:, lo:hi])
    return x, nfe


def fast_dllm_cached_generate(model, prompt, *, gen_length, block_length, mask_id, cache,
                              threshold=None, steps=None, shift=False):
    """Fast-dLLM ``llada/generate.py::generate_with_prefix_cache`` (``cache="prefix"``) and
    ``generate_with_dual_cache`` (``cache="dual"``), temperature 0, one row.

    Per block: one full forward that also returns every layer's keys and values, and decodes
    from its logits; then ``while True:`` a forward of the block only (dual: the keys and values
    before and after it from that full forward) or of the block and everything after it
    (prefix: only the keys and values before the block are reused), a commit, and only then the
    check whether the block still has a mask. So a block that its full forward completes still
    costs one more, idle forward, as upstream counts it. Each step commits by ``threshold`` as
    in :func:`fast_dllm_generate`, or (``threshold=None``) the step's share of LLaDA's schedule
    over ``steps`` by float64 confidence. ``model`` takes the reference model's cache arguments
    (``use_cache``, ``key_values``, ``window_start``).

    ``shift=True`` (Dream, whose ``logits[:, i]`` predict token ``i + 1``): logits aligned as
    Dream's generate aligns them (``cat(logits[:, :1], logits[:, :-1])``); a window then starts
    one position before the block, so that the block's first position has its logit.

    Returns ``(x, nfe, idle)``: ``nfe`` as upstream counts it, ``idle`` the forwards among them
    that found the block already complete (our loop checks first and does not run those).
    """
    b, p = prompt.shape
    assert b == 1
    x = torch.cat([prompt, torch.full((1, gen_length), mask_id)], dim=1)
    num_blocks = gen_length // block_length
    nfe = idle = 0

    def commit(logits, lo, hi, k):  # logits cover columns [lo, lo + logits.shape[1])
        view = x[:, lo:lo + logits.shape[1]]
        masked = view == mask_id
        masked[:, hi - lo:] = False
        x0 = logits.argmax(-1)
        conf = F.softmax(logits.to(torch.float64), dim=-1).gather(-1, x0[..., None]).squeeze(-1)
        x0 = torch.where(masked, x0, view)
        conf = torch.where(masked, conf, torch.full_like(conf, NEG_INF))
        n = int(masked.sum()) if threshold is not None else k
        if n == 0:  # upstream: topk(k=0) selects nothing
            return
        order = torch.topk(conf[0], k=n).indices
        keep = [order[0]] + [i for i in order[1:] if threshold is None or conf[0, i] >= threshold]
        chosen = torch.stack(keep)
        view[0, chosen] = x0[0, chosen]  # a view of x: commits in place

    for block in range(num_blocks):
        lo, hi = p + block * block_length, p + (block + 1) * block_length
        schedule = _llada_schedule(int((x[0, lo:hi] == mask_id).sum()), steps // num_blocks) if steps else None
        out = model(input_ids=x, use_cache=True)
        nfe += 1
        commit(torch.cat([out.logits[:, :1], out.logits[:, :-1]], dim=1) if shift else out.logits, 0, hi,
               schedule[0] if schedule else None)
        step = 1
        stop = hi if cache == "dual" else x.shape[1]
        first = lo - 1 if shift else lo
        while True:
            idle += int(not bool((x[:, lo:hi] == mask_id).any()))
            logits = model(input_ids=x[:, first:stop], key_values=out.key_values, window_start=first).logits
            nfe += 1
            commit(logits[:, :stop - lo], lo, hi, schedule[step] if schedule and step < len(schedule) else 0)
            step += 1
            if not bool((x[:, lo:hi] == mask_id).any()):
                break
    return x, nfe, idle


def dinfer_hierarchy_generate(fn, prompt, *, gen_length, block_length, mask_id, threshold=0.9,
                              low_threshold=0.3):
    """dInfer ``HierarchyDecoder`` (``python/dinfer/decoding/parallel_strategy.py``),
    temperature 0, one row, block by block until the block has no mask.

    Confidence = ``exp(log_softmax(block logits)[argmax])`` in the logits' dtype, the lowest
    finite float on decided positions. Each run of adjacent masked positions commits its
    maximum (every position equal to it) when that is ``> low_threshold``; every position
    ``> threshold`` commits; the block's first maximum always commits.
    """
    b, p = prompt.shape
    assert b == 1
    x = torch.cat([prompt, torch.full((1, gen_length), mask_id)], dim=1)
    nfe = 0
    for block in range(gen_length // block_length):
        lo, hi = p + block * block_length, p + (block + 1) * block_length
        while bool((x[:, lo:hi] == mask_id).any()):
            logits = fn(x)[0, lo:hi]
            nfe += 1
            x0 = logits.argmax(-1)
            conf = F.log_softmax(logits, dim=-1).gather(-1, x0[:, None]).squeeze(-1).exp()
            masked = x[0, lo:hi] == mask_id
            conf = torch.where(masked, conf, torch.full_like(conf, torch.finfo(conf.dtype).min))
            chosen = set()
            i = 0
            while i < block_length:
                if not masked[i]:
                    i += 1
                    continue
                j = i
                while j < block_length and masked[j]:
                    j += 1
                best = conf[i:j].max()
                chosen |= {k for k in range(i, j)
                           if conf[k] == best and (low_threshold is None or conf[k] > low_threshold)}
                i = j
            if threshold is not None:
                chosen |= {k for k in range(block_length) if conf[k] > threshold}
            chosen.add(int(conf.argmax()))
            for k in sorted(chosen):
                if masked[k]:
                    x[0, lo + k] = x0[k]
    return x, nfe


def sglang_joint_threshold_generate(fn, prompt, *, gen_length, block_length, mask_id, threshold=0.5,
                                    edit_threshold=0.0, max_post_edit_steps=16, penalty_lambda=0.0):
    """SGLang ``dllm/algorithm/joint_threshold.py::JointThreshold.run``, one block after another
    on the full canvas, one row, temperature 0.

    Up to ``block_length + max_post_edit_steps`` forwards per block. Each forward: the block's
    logits (the previous token's id penalised by ``penalty_lambda``), argmax ``x`` and its
    softmax probability ``p``. While the block has masks, masked positions with ``p >
    threshold`` take ``x`` (none: the most confident one, by ``torch.topk``); once it has none,
    a post-edit counter grows and past ``max_post_edit_steps`` the block ends. Decided
    positions (not given at block start) with ``p > edit_threshold`` and a token other than
    ``x`` take ``x``. A forward that changes nothing ends the block. (SGLang's extra forward
    after the block, which only persists the key-value cache, is not counted.)
    """
    assert prompt.shape[0] == 1
    p_len = prompt.shape[1]
    x = torch.cat([prompt, torch.full((1, gen_length), mask_id)], dim=1)
    nfe = 0
    for block in range(gen_length // block_length):
        lo, hi = p_len + block * block_length, p_len + (block + 1) * block_length
        given = x[0, lo:hi] != mask_id
        post_edit = 0
        for _ in range(block_length + max_post_edit_steps):
            logits = fn(x)[0, lo:hi].clone()
            nfe += 1
            ids = x[0, lo:hi]
            if penalty_lambda > 0:
                logits[1:].scatter_(1, ids[:-1, None], -penalty_lambda, reduce="add")
            tok = logits.argmax(-1)
            prob = F.softmax(logits, dim=-1).gather(-1, tok[:, None]).squeeze(-1)
            masked = ids == mask_id
            transfer = torch.zeros_like(masked)
            if masked.any():
                conf = torch.where(masked, prob, torch.full_like(prob, NEG_INF))
                transfer = conf > threshold
                if not transfer.any():
                    transfer[torch.topk(conf, k=1).indices] = True
            else:
                post_edit += 1
                if post_edit > max_post_edit_steps:
                    break
            transfer = transfer | ((prob > edit_threshold) & (ids != tok) & ~masked & ~given)
            if not transfer.any():
                break
            x[0, lo:hi] = torch.where(transfer, tok, ids)
    return x, nfe


def toy_logits_fn(model):
    """``fn(ids) -> logits`` for a toy Denoiser (ContextModel, ScriptedModel), as the oracles
    here call a model: one unpadded row, the full canvas."""
    session = model.start_session(None)

    def fn(ids):
        session.attention_mask = torch.ones_like(ids)
        return session.forward(ids, None)
    return fn


def assert_same_as_reference(ours, reference):
    """Our ``GenerateOutput`` of one row equals an oracle's ``(x, nfe)``."""
    x, nfe = reference
    assert torch.equal(ours.sequences, x) and ours.nfe.tolist() == [nfe]
