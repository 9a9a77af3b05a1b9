"""MetaCLIP balancing: keep probabilities, statistics against the formula, reproducibility."""

import numpy as np

from clipstack.curate.balance import (
    balance_mask,
    balance_stream,
    entry_probabilities,
    keep_probability,
    uniform_draws,
)
from clipstack.curate.matching import Matcher


def test_uniform_draws_are_uniform_and_deterministic():
    uids = np.arange(200_000, dtype=np.uint64) * np.uint64(7919)
    u = uniform_draws(0, uids, np.full(len(uids), 5))
    assert u.min() >= 0 and u.max() < 1
    hist, _ = np.histogram(u, bins=10, range=(0, 1))
    assert np.all(np.abs(hist / len(u) - 0.1) < 0.005)
    np.testing.assert_array_equal(u, uniform_draws(0, uids, np.full(len(uids), 5)))
    assert np.mean(u == uniform_draws(1, uids, np.full(len(uids), 5))) < 0.001
    assert abs(np.corrcoef(u, uniform_draws(0, uids, np.full(len(uids), 6)))[0, 1]) < 0.01


def test_probabilities():
    np.testing.assert_allclose(entry_probabilities(np.array([0, 5, 10, 40], dtype=np.uint64), 10),
                               [1, 1, 1, 0.25])


def test_balance_statistics_match_the_formula():
    # 3 entries: a head entry (count 40000), a mid one (4000), a tail one (50); t = 1000.
    rng = np.random.default_rng(0)
    n = 40000
    head = np.ones(n, dtype=bool)
    mid = rng.random(n) < 0.1
    tail = rng.random(n) < 0.00125
    lists = [[e for e, on in enumerate((h, m, t)) if on] for h, m, t in zip(head, mid, tail)]
    offsets = np.concatenate([[0], np.cumsum([len(x) for x in lists])]).astype(np.int64)
    ids = np.array([e for x in lists for e in x], dtype=np.int64)
    counts = np.bincount(ids, minlength=3).astype(np.uint64)
    probs = entry_probabilities(counts, 1000)
    uids = np.arange(n, dtype=np.uint64) + np.uint64(12345)
    keep = balance_mask(offsets, ids, probs, uids, seed=0)
    expected = keep_probability(offsets, ids, probs)
    assert abs(keep.sum() - expected.sum()) < 4 * np.sqrt(expected.sum())
    # Tail texts are always kept; each entry's kept count is close to min(count, t) + overlap.
    assert keep[tail].all()
    kept_head = keep[head].sum()
    p_h, p_m = probs[0], probs[1]
    want_head = n * p_h + mid.sum() * (1 - p_h) * p_m + tail.sum() * (1 - p_h)
    assert abs(kept_head - want_head) < 4 * np.sqrt(want_head)
    # Reproducible: same seed, same mask; another seed, another mask.
    np.testing.assert_array_equal(keep, balance_mask(offsets, ids, probs, uids, seed=0))
    assert (keep != balance_mask(offsets, ids, probs, uids, seed=1)).any()


def test_unmatched_texts_are_dropped_and_batching_is_irrelevant():
    matcher = Matcher(["cat", "dog", "bird"])
    texts = [f"a cat number {i}" if i % 3 else f"a dog {i}" for i in range(3000)] + ["nothing here"] * 5
    uids = np.arange(len(texts), dtype=np.uint64)
    whole = list(balance_stream(matcher, [(texts, uids)], t=200, seed=3))[0]
    batches = [(texts[i:i + 700], uids[i:i + 700]) for i in range(0, len(texts), 700)]
    split = np.concatenate(list(balance_stream(matcher, batches, t=200, seed=3)))
    np.testing.assert_array_equal(whole, split)
    assert not whole[-5:].any()
    n_cat = sum("cat" in t for t in texts)
    kept_cat = sum(k for t, k in zip(texts, whole) if "cat" in t)
    assert abs(kept_cat - 200) < 4 * np.sqrt(200 * (1 - 200 / n_cat))


def test_spilled_match_chunks_give_the_same_balance(tmp_path):
    from clipstack.curate.steps import Features, MatchStore, StepConfig, decide
    from clipstack.curate.uids import uid_for

    matcher = Matcher(["cat", "dog", "bird", "a"])
    texts = [f"a {['cat', 'dog', 'bird', 'fish'][i % 4]} {i}" for i in range(500)]
    results = []
    for store in (MatchStore(), MatchStore(tmp_path / "spill", chunk=37)):
        feats = Features(matches=store)
        for start in range(0, len(texts), 23):
            store.add(*matcher.match(texts[start:start + 23]))
        feats.keys = [str(i) for i in range(len(texts))]
        feats.uids = [uid_for(k) for k in feats.keys]
        alive = np.ones(len(texts), dtype=bool)
        alive[::10] = False  # counts and draws only over samples earlier steps kept
        dec = decide("balance", feats, alive, StepConfig(balance_t=40, seed=5, num_entries=4))
        results.append(dec)
    assert len(list(MatchStore(tmp_path / "unused"))) == 0
    assert len(list((tmp_path / "spill").glob("*.ids.npy"))) == 11  # batches of 23 flushed at >= 37: 46 each
    mem, disk = results
    np.testing.assert_array_equal(mem.drop, disk.drop)
    assert mem.reasons == disk.reasons
    np.testing.assert_array_equal(mem.info["counts_before"], disk.info["counts_before"])
    assert mem.info["counts_before"][3] == 450 and not mem.drop[::10].any()
    assert abs(int(mem.info["counts_after"][0]) - 40) < 25  # "cat": 113 alive, capped near t
