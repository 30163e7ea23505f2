"""How the supervised stages (SFT, RM) cut their examples into batches and deal them to the
ranks: pure functions of sizes, seeds and ranks, the same on every rank."""

from __future__ import annotations

import random


def token_budget_batches(
    sizes: list[tuple[int, int]], max_tokens: int, group_by_length: bool
) -> list[list[int]]:
    """Indices of examples (prompt tokens, response tokens) grouped into batches whose padded
    size, rows x (longest prompt + longest response), stays within max_tokens (an example
    larger than that goes alone). Grouping by length first keeps the padding small."""
    order = (
        sorted(range(len(sizes)), key=lambda i: sizes[i]) if group_by_length else range(len(sizes))
    )
    batches: list[list[int]] = []
    batch: list[int] = []
    longest_p = longest_r = 0
    for i in order:
        p, r = sizes[i]
        lp, lr = max(longest_p, p), max(longest_r, r)
        if batch and (len(batch) + 1) * (lp + lr) > max_tokens:
            batches.append(batch)
            batch, lp, lr = [], p, r
        batch.append(i)
        longest_p, longest_r = lp, lr
    if batch:
        batches.append(batch)
    return batches


def fixed_batches(n: int, batch_size: int) -> list[list[int]]:
    return [list(range(i, min(i + batch_size, n))) for i in range(0, n, batch_size)]


def even_shard(batches: list[list[int]], rank: int, world: int) -> list[list[int]]:
    """This rank's batches for a pass that must see every example once (evaluation): dealt out
    round-robin unshuffled; a rank short of batches gets empty ones (run as idle forwards, since
    ZeRO-3's gathers need every rank) so all ranks make the same number of forwards."""
    mine = batches[rank::world]
    return mine + [[]] * (-(-len(batches) // world) - len(mine))


def shard(
    batches: list[list[int]], rank: int, world: int, seed: int, epoch: int
) -> list[list[int]]:
    """This rank's batches of an epoch: the plan shuffled (seeded by epoch), padded by repeating
    its first batches to a multiple of the ranks (every rank must step equally often), dealt out
    round-robin."""
    order = list(batches)
    random.Random(seed * 1_000_003 + epoch).shuffle(order)
    if order:
        order += order[: -len(order) % world]
    return order[rank::world]
