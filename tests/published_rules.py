"""Plain re-statements of the reference loops of issue 13's rules, used as test oracles.

Written in our own words from the behaviour of the reference code (repository, file and commit of
each in docs/reference-equivalence.md), in the reference's own shape: one row, one loop per
block, Python loops, no plugins. Temperature 0. ``fn(ids) -> logits`` over the full canvas;
each returns ``(x, nfe)``.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

NEG_INF = float("-inf")


def _schedule(masked: int, steps: int) -> list[int]:
    base, extra = divmod(masked, steps)
    return [base + (1 if i < extra else 0) for i in range(steps)]


def klass_generate(fn, prompt, *, gen_length, block_length, mask_id, vocab_size, kl_threshold=0.01,
                   history=2, threshold=0.9, k=1):
    """d2Cache ``src/generation/klass.py::klass_generate`` (alg ``maskgit_plus``, no cache).

    Every step: softmax of the answer region's logits; per position the KL to the previous
    step's distribution (a float64 buffer of zeros at first, eps 1e-12) is pushed into a
    ``history``-long float64 window (zeros at first); stable = all of it below the bound. Stable
    masked positions of the block with confidence >= threshold commit; none: torch.topk over
    the answer region's confidence (-inf outside the block's masks), ``k`` of them.
    """
    b, p = prompt.shape
    assert b == 1
    x = torch.cat([prompt, torch.full((1, gen_length), mask_id)], dim=1)
    kl_history = torch.zeros(1, gen_length, history, dtype=torch.float64)
    prev = torch.zeros(1, gen_length, vocab_size, dtype=torch.float64)
    nfe = 0
    for block in range(gen_length // block_length):
        in_block = torch.zeros(1, gen_length, dtype=torch.bool)
        in_block[:, block * block_length:(block + 1) * block_length] = True
        while bool(((x[:, p:] == mask_id) & in_block).any()):
            logits = fn(x)[:, p:]
            nfe += 1
            probs = torch.softmax(logits, dim=-1)
            conf, x0 = probs.max(dim=-1)
            masked = x[:, p:] == mask_id
            conf = torch.where(masked, conf, NEG_INF)
            kl = (probs * (torch.log(probs + 1e-12) - torch.log(prev + 1e-12))).sum(dim=-1)
            kl_history = kl_history.roll(shifts=-1, dims=-1)
            kl_history[..., -1] = kl
            prev = probs.to(torch.float64)
            stable = (kl_history < kl_threshold).all(dim=-1) & masked & in_block
            score = torch.where(stable, conf, NEG_INF)
            chosen = torch.nonzero(score[0] >= threshold).flatten()
            if chosen.numel() == 0:
                ranked = torch.where(masked & in_block, conf, NEG_INF)[0]
                n = min(k, int((masked & in_block).sum()))
                chosen = torch.topk(ranked, n).indices
            x[0, p + chosen] = x0[0, chosen]
    return x, nfe


def prophet_generate(fn, prompt, *, steps, gen_length, block_length, mask_id, answer_start=0,
                     answer_length=5, early=7.5, mid=5.0, late=2.5):
    """pixeli99/Prophet ``generate_earlyexit.py::generate`` (``analyze_gap=True``, no cfg, no
    constraints, ``answer_start_pos = prompt length + answer_start``), temperature 0.

    LLaDA's top-k schedule; before each step's commit, the mean top-1 minus top-2 logit over
    the answer positions (a Python sum of floats); with ``progress = global step / steps`` the
    bound is early below 0.33, mid below 0.67, late after; at or above it every remaining mask
    of the canvas takes its argmax and the decode ends.
    """
    b, p = prompt.shape
    assert b == 1
    x = torch.cat([prompt, torch.full((1, gen_length), mask_id)], dim=1)
    num_blocks = gen_length // block_length
    per_block = steps // num_blocks
    global_step = 0
    for block in range(num_blocks):
        lo, hi = p + block * block_length, p + (block + 1) * block_length
        schedule = _schedule(int((x[0, lo:hi] == mask_id).sum()), per_block)
        for i in range(per_block):
            global_step += 1
            masked = x == mask_id
            logits = fn(x)
            x0 = logits.argmax(-1)
            conf = F.softmax(logits, dim=-1).gather(-1, x0[..., None]).squeeze(-1)
            start = p + answer_start
            gaps = []
            for pos in range(start, min(p + gen_length, start + answer_length)):
                top2 = torch.topk(logits[0, pos], k=2).values
                gaps.append((top2[0] - top2[1]).item())
            if gaps:
                mean = sum(gaps) / len(gaps)
                progress = global_step / steps
                bound = early if progress < 0.33 else mid if progress < 0.67 else late
                if mean >= bound:
                    x[masked] = x0[masked]
                    return x, global_step
            conf[:, hi:] = NEG_INF
            conf = torch.where(masked, conf, NEG_INF)
            if schedule[i] > 0:
                chosen = torch.topk(conf[0], k=schedule[i]).indices
                x[0, chosen] = x0[0, chosen]
    return x, global_step


def pc_sampler_generate(fn, prompt, *, steps, gen_length, block_length, mask_id, freq, lambd=0.25, alpha=10.0):
    """NEUIR/PC-Sampler ``src/generate.py::generate_with_pc_sampler``, temperature 0.

    LLaDA's top-k schedule ranked over the block's slice by ``exp(-lambd * j) * min(-p *
    log(freq[x0] + 1e-9), alpha)`` (``j`` the position in the block, float32).
    """
    b, p = prompt.shape
    assert b == 1
    x = torch.cat([prompt, torch.full((1, gen_length), mask_id)], dim=1)
    num_blocks = gen_length // block_length
    per_block = steps // num_blocks
    nfe = 0
    for block in range(num_blocks):
        lo, hi = p + block * block_length, p + (block + 1) * block_length
        schedule = _schedule(int((x[0, lo:hi] == mask_id).sum()), per_block)
        for i in range(per_block):
            masked = x == mask_id
            logits = fn(x)
            nfe += 1
            x0 = logits.argmax(-1)
            conf = F.softmax(logits, dim=-1).gather(-1, x0[..., None]).squeeze(-1)
            x0 = torch.where(masked, x0, x)
            cross = (-conf[:, lo:hi] * torch.log(freq[x0[:, lo:hi]] + 1e-9)).clamp(max=alpha)
            score = torch.exp(-lambd * torch.arange(block_length, dtype=torch.float32)) * cross
            score = torch.where(masked[:, lo:hi], score, NEG_INF)
            chosen = torch.topk(score[0], k=schedule[i]).indices
            x[0, lo + chosen] = x0[0, lo + chosen]
    return x, nfe


def dus_generate(fn, prompt, *, gen_length, block_length, mask_id, base=2.0):
    """Dilated unmasking (arXiv 2506.19037) in a block loop: per block of ``B`` positions,
    steps ``t = 1 .. ceil(log_base B)``; step ``t`` commits (argmax) the not yet committed
    positions ``j`` with ``j % max(1, B // base**t) == 0``; the last step's group is merged
    into the previous one when it is smaller."""
    b, p = prompt.shape
    assert b == 1
    x = torch.cat([prompt, torch.full((1, gen_length), mask_id)], dim=1)
    steps = math.ceil(math.log(block_length) / math.log(base))
    groups, done = [], set()
    for t in range(1, steps + 1):
        stride = max(1, int(block_length // base ** t))
        group = [j for j in range(block_length) if j not in done and j % stride == 0]
        if t == steps and groups and len(group) < len(groups[-1]):
            groups[-1] += group
        else:
            groups.append(group)
            done |= set(group)
    groups = [g for g in groups if g]  # empty groups (base < 2) would commit nothing
    if not groups:
        groups = [list(range(block_length))]
    nfe = 0
    for block in range(gen_length // block_length):
        lo = p + block * block_length
        for group in groups:
            x0 = fn(x).argmax(-1)
            nfe += 1
            for j in group:
                x[0, lo + j] = x0[0, lo + j]
    return x, nfe


def saber_generate(fn, prompt, *, gen_length, mask_id, n=2, max_steps=10**9):
    """zhaoyMa/Saber ``decoding.py::generate_with_saber`` with one block (``block_length =
    gen_length``, its configs), temperature 0.

    Per step: confidence = softmax probability of the argmax at the answer positions; the
    threshold is the mean confidence of every position at its latest commit (1 before any); every
    mask above it commits, at least the ``n`` best (torch.topk over the canvas row). The decode
    ends when nothing is masked. Else backtracking: the decided answer positions are ranked by
    confidence now minus at the previous step (0 before the first step), and the
    ``max(n // 2, (m + 7) // 8)`` (at most ``m - 1``, ``m = max(n, commits)``) smallest reopen.

    Restated where Saber's code reaches outside the answer (see docs/reference-equivalence.md):
    with fewer than ``n`` masks left its ``topk(k=n)`` also picks -inf positions (prompt or
    decided ones, which it re-writes with their argmax), here only the masks; backtracking stops
    after ``max_steps`` steps (Saber: 1024), as our loop stops remasking.
    """
    b, p = prompt.shape
    assert b == 1
    x = torch.cat([prompt, torch.full((1, gen_length), mask_id)], dim=1)
    answer = torch.zeros_like(x, dtype=torch.bool)
    answer[:, p:] = True
    committed_with = torch.full(x.shape, NEG_INF, dtype=torch.float32)
    last = torch.zeros(x.shape, dtype=torch.float32)
    nfe = 0
    while True:
        logits = fn(x)
        nfe += 1
        x0 = logits.argmax(-1)
        prob = F.softmax(logits, dim=-1).gather(-1, x0[..., None]).squeeze(-1)
        conf = torch.where(answer, prob, NEG_INF)
        delta = conf - last
        delta = torch.where(torch.isfinite(delta), delta, float("inf"))
        last = conf
        masked = x == mask_id
        conf = torch.where(masked, conf, NEG_INF)
        seen = committed_with[0][committed_with[0] > NEG_INF]
        threshold = seen.mean() if seen.numel() else 1
        chosen = torch.where(conf[0] > threshold)[0]
        if chosen.numel() < n:
            chosen = torch.topk(conf[0], k=min(n, int(masked.sum()))).indices
        made = max(n, chosen.numel())
        x[0, chosen] = x0[0, chosen]
        committed_with[0, chosen] = prob[0, chosen]
        if not bool((x == mask_id).any()):
            return x, nfe
        drop = torch.where(answer & (x != mask_id), delta, float("inf"))
        quota = min(max(n // 2, (made + 7) // 8), made - 1)
        if quota > 0 and nfe < max_steps:
            reopen = torch.topk(-drop[0], k=quota).indices
            x[0, reopen] = mask_id


def local_leap_generate(fn, prompt, *, gen_length, block_length, mask_id, threshold=0.9, relaxed_threshold=0.75,
                        radius=4):
    """LocalLeap's LLaDA ``generate.py::generate`` with ``get_transfer_index`` (threshold mode,
    no cache), temperature 0.

    Per step until the block has no mask: float64 softmax probability of the argmax at the
    masked positions up to the block end (-inf elsewhere); ``torch.topk`` over the canvas row
    with k = the masked count. Anchors: masked positions with probability >= threshold; their
    neighbourhood: canvas columns within ``radius`` of one. The first ranked position always
    commits; each later one is dropped when below its threshold: ``relaxed_threshold`` inside a
    neighbourhood (only if there are anchors), ``threshold`` elsewhere.
    """
    b, p = prompt.shape
    assert b == 1
    x = torch.cat([prompt, torch.full((1, gen_length), mask_id)], dim=1)
    nfe = 0
    for block in range(gen_length // block_length):
        hi = p + (block + 1) * block_length
        while bool((x[:, hi - block_length:hi] == mask_id).any()):
            masked = x == mask_id
            masked[:, hi:] = False
            logits = fn(x)
            nfe += 1
            x0 = logits.argmax(-1)
            conf = F.softmax(logits.to(torch.float64), dim=-1).gather(-1, x0[..., None]).squeeze(-1)
            conf = torch.where(masked, conf, NEG_INF)[0]
            n = int(masked.sum())
            order = torch.topk(conf, k=n).indices.tolist()
            anchors = [i for i in range(x.shape[1]) if masked[0, i] and conf[i] >= threshold]
            near = {j for a in anchors for j in range(max(0, a - radius), min(x.shape[1], a + radius + 1))}
            keep = [order[0]]
            for i in order[1:]:
                bound = relaxed_threshold if anchors and i in near else threshold
                if conf[i] >= bound:
                    keep.append(i)
            x[0, keep] = x0[0, keep]
    return x, nfe


def slow_fast_generate(fn, prompt, *, gen_length, block_length, mask_id, explore_steps=6, span_threshold=0.3,
                       high_threshold=0.9, window=2, stability=1.0, end_explore_when_stable=False,
                       truncate_fast=False):
    """LiangrunFlora/Slow-Fast-Sampling ``sampling_utils/generate_slow_fast_sampling.py::
    generate_slow_fast_sampling`` (no cfg, no feature cache), temperature 0, one row.

    Per block, cycles while the block has a mask; a cycle's span starts at ``last`` (0 first),
    its end ``actual`` starts at the block length. Slow phase, ``explore_steps`` forwards: argmax
    of ``exp(logits)``; probability = softmax in the logits' dtype; confidence -inf where not
    masked. Unless the end is fixed: estimate = ``last`` + 1 + the offset of the farthest
    position of ``[last, block end)`` with confidence >= ``span_threshold`` (``last + 1`` if none),
    pushed into a deque of ``window``; a full deque with ``np.std < stability`` fixes the end at
    the estimate, and at the last slow step an unfixed full deque fixes it at ``int(mean)``.
    Every slow step commits the masks of ``[last, block end)`` with confidence >=
    ``high_threshold`` if there are at least two, else ``torch.topk(k=1)`` of that slice. After
    the slow phase an unfixed end is ``int(mean(deque))``. Fast phase, while ``[last, actual)``
    has a mask: the same commit rule within ``[last, actual)``. Then ``last = actual``.

    Restated (docs/reference-equivalence.md): (1) a slow phase stops once the block is full (the
    reference spends its remaining slow forwards, which commit nothing); (2) the reference's
    fast-phase forwards after the first one see the canvas truncated at the span end (the rest
    cached from the first); ``truncate_fast=True`` does that, the default forwards the whole
    canvas, as our loop does; (3) ``end_explore_when_stable`` is the paper's rule (the slow phase
    ends at the first stable estimate), not in the code. ``max_sub_cycles_per_block`` (256) is
    never reached here (each cycle advances the span by at least one position).
    """
    b, p = prompt.shape
    assert b == 1
    x = torch.cat([prompt, torch.full((1, gen_length), mask_id)], dim=1)
    nfe = 0

    def forward(ids, cut=None):
        logits = fn(ids if cut is None else ids[:, :cut])
        x0 = torch.exp(logits).argmax(-1)
        prob = F.softmax(logits, dim=-1).gather(-1, x0[..., None]).squeeze(-1)
        return x0, torch.where(ids[:, :logits.shape[1]] == mask_id, prob, NEG_INF)

    def commit(x0, conf, lo, hi):
        scope = conf[0, lo:hi]
        high = [lo + i for i in range(hi - lo) if bool(scope[i] >= high_threshold)]
        chosen = high if len(high) > 1 else [lo + int(torch.topk(scope, k=1).indices[0])]
        for i in chosen:
            x[0, i] = x0[0, i]

    for block in range(gen_length // block_length):
        lo = p + block * block_length
        last, actual = 0, block_length
        while bool((x[:, lo:lo + block_length] == mask_id).any()):
            history, fixed = [], False
            for step in range(explore_steps):
                if not bool((x[:, lo:lo + block_length] == mask_id).any()):
                    break  # (1)
                x0, conf = forward(x)
                nfe += 1
                if not fixed:
                    scope = conf[0, lo + last:lo + block_length]
                    above = (scope >= span_threshold).nonzero().flatten()
                    estimate = min(max(1, last + (int(above.max()) + 1 if above.numel() else 1)), block_length)
                    history = (history + [estimate])[-window:]
                    if len(history) >= window:
                        if float(np.std(np.array(history))) < stability:
                            actual, fixed = history[-1], True
                        elif step == explore_steps - 1:
                            actual, fixed = max(1, min(int(np.mean(np.array(history))), block_length)), True
                if bool((x[0, lo + last:lo + block_length] == mask_id).any()):
                    commit(x0, conf, lo + last, lo + block_length)
                if fixed and end_explore_when_stable:
                    break  # (3)
            if not fixed:
                actual = max(1, min(int(np.mean(np.array(history))), block_length)) if history else block_length // 2
            first = True
            while bool((x[0, lo + last:lo + actual] == mask_id).any()):
                cut = None if first or not truncate_fast else lo + actual
                x0, conf = forward(x, cut)
                nfe += 1
                first = False
                commit(x0, conf, lo + last, lo + actual)
            last = actual
    return x, nfe


def wino_generate(fn, prompt, *, gen_length, block_length, mask_id, attention_mask=None, wide_in=0.6,
                  narrow_out=0.9, n=1):
    """d2Cache ``src/generation/wino.py::wino_generate`` (alg ``maskgit_plus``, temperature 0,
    no sigma). ``fn(x, mask, position_ids) -> logits`` runs the model on ``x`` with a 4-D bool
    mask ``(1, 1, S, S)`` (query x key) and explicit positions.

    Each step: the canvas plus a block of [MASK] (the shadow block) at the end; positions count
    real tokens ((cumsum - 1) * mask), the shadow takes the block's; every query sees every real
    key, except that no canvas query sees the shadow and shadow position j does not see block
    column j. Masked block positions use the canvas' logits, decided ones the shadow's (float64
    softmax). Wide in: masked positions with confidence >= wide_in; more than
    cap = max(n, clamp(int(0.7 * masked), 5, 20)) -> top-cap; fewer than n -> top-n (topk over
    the block, -inf outside the masks). Narrow out: positions decided before the step whose
    shadow probability of their token is < narrow_out; if more than k = wide-in count - n, the k
    least probable (k = 0: none). Loop while the block has masks.
    """
    b, p = prompt.shape
    assert b == 1
    dev = prompt.device
    real = torch.ones(1, p, dtype=torch.long, device=dev) if attention_mask is None else attention_mask.clone()
    real = torch.cat([real, torch.ones(1, gen_length, dtype=torch.long, device=dev)], dim=1)
    x = torch.cat([prompt, torch.full((1, gen_length), mask_id, device=dev)], dim=1)
    total = x.shape[1]
    positions = (torch.cumsum(real, dim=1) - 1) * real
    nfe = 0
    for block in range(gen_length // block_length):
        start, end = p + block * block_length, p + (block + 1) * block_length
        while bool((x[0, start:end] == mask_id).any()):
            masked = x[0, start:end] == mask_id
            ids = torch.cat([x, torch.full((1, block_length), mask_id, device=dev)], dim=1)
            pos = torch.cat([positions, positions[:, start:end]], dim=1)
            keys = torch.cat([real, torch.ones(1, block_length, dtype=torch.long, device=dev)], dim=1).bool()
            mask = keys[:, None, None, :].expand(1, 1, total + block_length, total + block_length).clone()
            mask[:, :, :total, total:] = False
            mask[:, :, total:, start:end] &= ~torch.eye(block_length, dtype=torch.bool, device=dev)
            logits = fn(ids, mask, pos)
            nfe += 1
            combined = torch.where(masked[:, None], logits[0, start:end], logits[0, total:]).to(torch.float64)
            probs = torch.softmax(combined, dim=-1)
            conf, x0 = probs.max(dim=-1)
            current = probs.gather(-1, x[0, start:end, None]).squeeze(-1)
            confidence = torch.where(masked, conf, current)
            scores = torch.where(masked, confidence, NEG_INF)
            count = int(masked.sum())
            cap = max(min(max(int(count * 0.7), 5), 20), n)
            chosen = (scores >= wide_in).nonzero().flatten()
            if chosen.numel() > cap:
                chosen = torch.topk(scores, min(count, cap)).indices
            elif chosen.numel() < n:
                chosen = torch.topk(scores, min(count, n)).indices
            wide = int(chosen.numel())
            shadow = torch.where(~masked, confidence, float("inf"))
            remask = shadow < narrow_out
            target = max(wide - n, 0)
            if int(remask.sum()) > target:
                remask = torch.zeros_like(remask)
                if target > 0:
                    remask[torch.topk(shadow, target, largest=False).indices] = True
            block_tokens = x[0, start:end].clone()
            block_tokens[chosen] = x0[chosen]
            block_tokens[remask] = mask_id
            x[0, start:end] = block_tokens
    return x, nfe
