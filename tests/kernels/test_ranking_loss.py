import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

from instructray.kernels import kwise_ranking_loss, pairwise_loss, tie_tensors

F64 = torch.float64


def close(actual, expected, atol=1e-10):
    assert_close(actual, torch.as_tensor(expected, dtype=F64), atol=atol, rtol=0)


def softplus(x):
    return math.log1p(math.exp(x))


def batch_of(elements, k_max=9):
    """[(scores list, ranking list)] -> padded (scores, ranking, num_responses); padding is junk."""
    scores = torch.full((len(elements), k_max), 123.0, dtype=F64)
    ranking = torch.full((len(elements), k_max), -1, dtype=torch.long)
    for b, (s, r) in enumerate(elements):
        scores[b, : len(s)] = torch.tensor(s, dtype=F64)
        ranking[b, : len(r)] = torch.tensor(r)
    return scores, ranking, torch.tensor([len(s) for s, _ in elements])


def loop_reference(elements):
    """Per element: mean over pairs (i above j in ranking) of -log sigmoid(s_i - s_j)."""
    element_losses, correct, pairs = [], 0, 0
    for scores, ranking in elements:
        losses = []
        for a, b in itertools.combinations(range(len(ranking)), 2):
            diff = scores[ranking[a]] - scores[ranking[b]]
            losses.append(softplus(-diff))
            correct += diff > 0
            pairs += 1
        element_losses.append(sum(losses) / len(losses))
    return sum(element_losses) / len(element_losses), correct / pairs, pairs


def random_elements(seed, sizes):
    gen = torch.Generator().manual_seed(seed)
    elements = []
    for k in sizes:
        scores = (torch.randn(k, generator=gen, dtype=F64) * 2).tolist()
        ranking = torch.randperm(k, generator=gen).tolist()
        elements.append((scores, ranking))
    return elements


def test_pairwise_loss_hand_computed():
    chosen = torch.tensor([1.0, 0.0], dtype=F64)
    rejected = torch.tensor([0.0, 2.0], dtype=F64)
    # -log sigmoid(1) = ln(1 + e^-1) = 0.313261...; -log sigmoid(-2) = ln(1 + e^2) = 2.126928...
    close(pairwise_loss(chosen, rejected), (math.log1p(math.exp(-1)) + math.log1p(math.exp(2))) / 2)


def test_kwise_hand_computed_k3():
    # scores r0=0, r1=2, r2=1; ranking best first [1, 2, 0]: pairs (r1, r2) d=1, (r1, r0) d=2,
    # (r2, r0) d=1 -> loss = (2 ln(1 + e^-1) + ln(1 + e^-2)) / 3, every pair correct
    scores, ranking, num = batch_of([([0.0, 2.0, 1.0], [1, 2, 0])], k_max=4)
    loss, stats = kwise_ranking_loss(scores, ranking, num)
    close(loss, (2 * math.log1p(math.exp(-1)) + math.log1p(math.exp(-2))) / 3)
    close(stats["pairwise_accuracy"], 1.0)
    assert stats["num_pairs"].item() == 3
    # ranking [0, 1, 2]: pairs d = 0-2, 0-1, 2-1 -> only the last is correct
    _, stats = kwise_ranking_loss(scores, torch.tensor([[0, 1, 2, -1]]), num)
    close(stats["pairwise_accuracy"], 1 / 3)


def test_kwise_k4_equals_mean_of_its_six_pairwise_losses():
    [(s, r)] = random_elements(seed=0, sizes=[4])
    scores, ranking, num = batch_of([(s, r)], k_max=4)
    loss, stats = kwise_ranking_loss(scores, ranking, num)
    pairs = list(itertools.combinations(r, 2))  # (winner, loser) in ranking order
    assert len(pairs) == 6 and stats["num_pairs"].item() == 6
    pair_losses = [
        pairwise_loss(torch.tensor([s[w]], dtype=F64), torch.tensor([s[lo]], dtype=F64))
        for w, lo in pairs
    ]
    close(loss, torch.stack(pair_losses).mean())


def test_kwise_k2_is_pairwise_loss():
    elements = random_elements(seed=1, sizes=[2, 2, 2])
    loss, _ = kwise_ranking_loss(*batch_of(elements, k_max=2))
    chosen = torch.tensor([s[r[0]] for s, r in elements], dtype=F64)
    rejected = torch.tensor([s[r[1]] for s, r in elements], dtype=F64)
    close(loss, pairwise_loss(chosen, rejected))


def test_kwise_mixed_k_equals_mean_of_per_element_losses():
    elements = random_elements(seed=2, sizes=[2, 4, 9])
    loss, _ = kwise_ranking_loss(*batch_of(elements))
    one_at_a_time = [kwise_ranking_loss(*batch_of([e]))[0] for e in elements]
    close(loss, torch.stack(one_at_a_time).mean())


def test_kwise_matches_loop_reference():
    elements = random_elements(seed=3, sizes=[3, 9, 5, 2, 7, 4])
    loss, stats = kwise_ranking_loss(*batch_of(elements))
    ref_loss, ref_accuracy, ref_pairs = loop_reference(elements)
    close(loss, ref_loss)
    close(stats["pairwise_accuracy"], ref_accuracy)
    assert stats["num_pairs"].item() == ref_pairs == 3 + 36 + 10 + 1 + 21 + 6


def test_scores_consistent_with_ranking_give_accuracy_one():
    elements = []
    for s, r in random_elements(seed=4, sizes=[9, 3, 6]):
        by_rank = sorted(s, reverse=True)  # the response at rank i gets the i-th largest score
        consistent = [0.0] * len(s)
        for rank, index in enumerate(r):
            consistent[index] = by_rank[rank]
        elements.append((consistent, r))
    _, stats = kwise_ranking_loss(*batch_of(elements))
    close(stats["pairwise_accuracy"], 1.0)
    reversed_elements = [(s, r[::-1]) for s, r in elements]
    _, stats = kwise_ranking_loss(*batch_of(reversed_elements))
    close(stats["pairwise_accuracy"], 0.0)


def test_padding_is_never_read_and_gets_no_gradient():
    elements = random_elements(seed=5, sizes=[3, 5])
    scores, ranking, num = batch_of(elements)
    base, _ = kwise_ranking_loss(scores, ranking, num)
    padding = torch.arange(9) >= num[:, None]
    junk_scores = scores.masked_fill(padding, float("nan")).requires_grad_()
    junk_ranking = ranking.masked_fill(padding, 7)
    loss, _ = kwise_ranking_loss(junk_scores, junk_ranking, num)
    assert torch.equal(loss, base)
    loss.backward()
    assert torch.all(junk_scores.grad[padding] == 0)
    assert torch.all(junk_scores.grad[~padding] != 0)


def test_kwise_gradient_matches_autograd_of_loop_formula():
    [(s, r)] = random_elements(seed=6, sizes=[5])
    scores = torch.tensor([s], dtype=F64, requires_grad=True)
    loss, _ = kwise_ranking_loss(scores, torch.tensor([r]), torch.tensor([5]))
    (grad,) = torch.autograd.grad(loss, scores)
    direct = torch.tensor(s, dtype=F64, requires_grad=True)
    pairs = itertools.combinations(r, 2)
    ref = torch.stack([-F.logsigmoid(direct[w] - direct[lo]) for w, lo in pairs]).mean()
    (ref_grad,) = torch.autograd.grad(ref, direct)
    close(grad[0], ref_grad)


@pytest.mark.parametrize("bad_k", [1, 10])
def test_k_out_of_range_names_the_row(bad_k):
    scores = torch.zeros(3, 10, dtype=F64)
    ranking = torch.arange(10).repeat(3, 1)
    num = torch.tensor([4, bad_k, 2])
    with pytest.raises(ValueError, match=f"row 1: num_responses={bad_k}"):
        kwise_ranking_loss(scores, ranking, num)


def test_ranking_not_a_permutation_names_the_row():
    scores, ranking, num = batch_of(random_elements(seed=7, sizes=[3, 4]))
    ranking[1, :4] = torch.tensor([0, 1, 1, 3])
    with pytest.raises(ValueError, match=r"row 1: ranking\[:4\]=\[0, 1, 1, 3\]"):
        kwise_ranking_loss(scores, ranking, num)
    ranking[1, :4] = torch.tensor([0, 1, 2, 4])  # index 4 is past K=4
    with pytest.raises(ValueError, match="row 1"):
        kwise_ranking_loss(scores, ranking, num)


def test_bf16_scores_are_scored_in_fp32():
    elements = random_elements(seed=8, sizes=[4, 6])
    scores, ranking, num = batch_of(elements)
    bf16 = scores.to(torch.bfloat16)
    loss, stats = kwise_ranking_loss(bf16, ranking, num)
    assert loss.dtype == torch.float32 and stats["pairwise_accuracy"].dtype == torch.float32
    # the same numbers as the bf16 values upcast first (bf16 arithmetic would be off by ~1e-2)
    ref_loss, _ = kwise_ranking_loss(bf16.float(), ranking, num)
    assert_close(loss, ref_loss, atol=1e-7, rtol=0)
    chosen, rejected = bf16[:, 0], bf16[:, 1]
    assert pairwise_loss(chosen, rejected).dtype == torch.float32


def test_kwise_with_a_denominator_is_the_element_sum_over_it():
    # Two elements of losses a (K=2, d=1) and b (K=3 as in the k3 test), over a whole batch of 4
    scores, ranking, num = batch_of([([1.0, 0.0], [0, 1]), ([0.0, 2.0, 1.0], [1, 2, 0])], k_max=3)
    a = math.log1p(math.exp(-1))
    b = (2 * math.log1p(math.exp(-1)) + math.log1p(math.exp(-2))) / 3
    loss, _ = kwise_ranking_loss(scores, ranking, num, denominator=4.0)
    close(loss, (a + b) / 4)
    # dealt one element to each of 2 ranks (denominator 2 / 2 = 1 each): their mean is the batch's
    shares = [
        kwise_ranking_loss(scores[i : i + 1], ranking[i : i + 1], num[i : i + 1], 1.0)[0]
        for i in (0, 1)
    ]
    close((shares[0] + shares[1]) / 2, (a + b) / 2)


# ------------------------------------------------------------------------------------- ties


def test_tied_pairs_are_dropped_hand_computed():
    # scores r0=0, r1=2, r2=1, r3=5; groups [[1], [2, 0], [3]]: response 1 best, 2 and 0 tied,
    # 3 worst. Pairs counted: (1,2) d=1, (1,0) d=2, (1,3) d=-3, (2,3) d=-4, (0,3) d=-5; (2,0)
    # is tied and dropped. Correct: the first two of five.
    s = [0.0, 2.0, 1.0, 5.0]
    ranking, tiers = tie_tensors([[[1], [2, 0], [3]]], k_max=4)
    assert ranking.tolist() == [[1, 2, 0, 3]] and tiers.tolist() == [[0, 1, 1, 2]]
    scores = torch.tensor([s], dtype=F64)
    loss, stats = kwise_ranking_loss(scores, ranking, torch.tensor([4]), tiers=tiers)
    expected = (softplus(-1) + softplus(-2) + softplus(3) + softplus(4) + softplus(5)) / 5
    close(loss, expected)
    close(stats["pairwise_accuracy"], 2 / 5)
    assert stats["num_pairs"].item() == 5 and stats["tied_pairs"].item() == 1
    # the tie's two members in the other order: the same loss (a tie has no direction)
    swapped, _ = tie_tensors([[[1], [0, 2], [3]]], k_max=4)
    loss2, _ = kwise_ranking_loss(scores, swapped, torch.tensor([4]), tiers=tiers)
    close(loss2, expected)


def test_a_prompt_whose_answers_all_tie_adds_nothing():
    # element 0: K=2, d=1 -> ln(1 + e^-1); element 1: three answers all tied -> nothing at all
    scores = torch.tensor([[1.0, 0.0, 9.0], [3.0, -4.0, 0.5]], dtype=F64, requires_grad=True)
    ranking, tiers = tie_tensors([[[0], [1]], [[0, 1, 2]]], k_max=3)
    num = torch.tensor([2, 3])
    loss, stats = kwise_ranking_loss(scores, ranking, num, tiers=tiers)
    close(loss, softplus(-1))  # the mean over the one element that has a pair
    assert stats["num_pairs"].item() == 1 and stats["tied_pairs"].item() == 3
    loss.backward()
    assert torch.all(scores.grad[1] == 0)


def test_tiers_of_a_strict_ranking_change_nothing():
    elements = random_elements(seed=9, sizes=[3, 9, 5])
    scores, ranking, num = batch_of(elements)
    strict = torch.arange(9).repeat(3, 1)
    plain, plain_stats = kwise_ranking_loss(scores, ranking, num)
    tied, tied_stats = kwise_ranking_loss(scores, ranking, num, tiers=strict)
    close(tied, plain)
    assert tied_stats["tied_pairs"].item() == 0
    assert tied_stats["num_pairs"].item() == plain_stats["num_pairs"].item()


def test_ties_match_a_loop_reference():
    gen = torch.Generator().manual_seed(10)
    groups, elements_scores = [], []
    for k in (4, 9, 6, 3):
        order = torch.randperm(k, generator=gen).tolist()
        cuts = sorted(set(torch.randint(1, k, (2,), generator=gen).tolist()))
        row = [order[a:b] for a, b in zip([0, *cuts], [*cuts, k], strict=True)]
        groups.append(row)
        elements_scores.append((torch.randn(k, generator=gen, dtype=F64) * 2).tolist())
    element_losses, correct, pairs = [], 0, 0
    for s, row in zip(elements_scores, groups, strict=True):
        tier = {i: t for t, g in enumerate(row) for i in g}
        losses = []
        for w in range(len(s)):
            for lo in range(len(s)):
                if tier[w] < tier[lo]:
                    losses.append(softplus(s[lo] - s[w]))
                    correct += s[w] > s[lo]
                    pairs += 1
        element_losses.append(sum(losses) / len(losses))
    scores = torch.full((4, 9), 7.0, dtype=F64)
    for b, s in enumerate(elements_scores):
        scores[b, : len(s)] = torch.tensor(s, dtype=F64)
    ranking, tiers = tie_tensors(groups, k_max=9)
    num = torch.tensor([len(s) for s in elements_scores])
    loss, stats = kwise_ranking_loss(scores, ranking, num, tiers=tiers)
    close(loss, sum(element_losses) / len(element_losses))
    close(stats["pairwise_accuracy"], correct / pairs)
    assert stats["num_pairs"].item() == pairs


def test_a_tied_score_is_a_miss():
    # A reward model collapsed to a constant ranks nothing: its accuracy is 0, not 1.
    scores, ranking, num = batch_of([([0.5, 0.5, 0.5], [2, 0, 1]), ([0.5, 0.5], [1, 0])], k_max=3)
    _, stats = kwise_ranking_loss(scores, ranking, num)
    close(stats["pairwise_accuracy"], 0.0)
    # one tied score of three pairs: r = [1, 0, 0] ranked [0, 1, 2] -> (0,1) and (0,2) right
    _, stats = kwise_ranking_loss(*batch_of([([1.0, 0.0, 0.0], [0, 1, 2])], k_max=3))
    close(stats["pairwise_accuracy"], 2 / 3)


def test_decreasing_tiers_name_the_row():
    scores, ranking, num = batch_of(random_elements(seed=11, sizes=[3, 4]))
    tiers = torch.tensor([[0, 1, 2] + [-1] * 6, [0, 1, 0, 2] + [-1] * 5])
    with pytest.raises(ValueError, match=r"row 1: tiers\[:4\]=\[0, 1, 0, 2\] must not decrease"):
        kwise_ranking_loss(scores, ranking, num, tiers=tiers)
