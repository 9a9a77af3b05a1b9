"""`clipstack curate`: read a pool of shards, run the chosen steps, write curated shards and a ledger.

Two streaming passes over the input shards. Pass 1 reads every sample once and keeps only small
features (hashes, reason codes, scores, metadata matches); the steps then decide in the given order over
those features. Pass 2 reads the shards again and writes, per input shard, one output shard holding the
kept samples (its manifest lists the dropped ones with their reasons). Beside them: `subset.npy` (sorted
128-bit uids, DataComp style), `ledger.parquet` (uid, key, step, reason, detail for every drop) and
`_stats.json`. Every input sample is either kept or in the ledger: in == kept + dropped.
"""

from __future__ import annotations

import dataclasses
import os
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from clipstack.curate.steps import STEPS, Decision, Features, MatchStore, StepConfig, decide
from clipstack.curate.uids import uid_for
from clipstack.errors import ConfigError, DataError


@dataclass
class CurateConfig:
    steps: list[str] = field(default_factory=lambda: ["text", "basic", "exact", "phash", "caption"])
    metadata: str | None = None
    match_method: str = "aho"
    balance_t: float = 20000.0
    seed: int = 0
    min_words: int = 2
    min_chars: int = 5
    min_side: int = 200
    max_aspect: float = 3.0
    phash_threshold: int = 4
    phash_size: int = 8
    embed_threshold: float = 0.95
    clip_model: str | None = None
    clip_pretrained: str | None = None
    clip_threshold: float | None = None
    clip_fraction: float | None = None
    batch_size: int = 256
    device: str = "cpu"
    decode_side: int = 128  # images are decoded with no side below this (JPEG draft); 0 = full size
    workers: int = 1

    def validate(self) -> None:
        for step in self.steps:
            if step not in STEPS:
                raise ConfigError(f"--steps: unknown step {step!r} (choose from {', '.join(STEPS)})")
        if len(set(self.steps)) != len(self.steps):
            raise ConfigError(f"--steps: a step is listed twice ({','.join(self.steps)})")
        if "balance" in self.steps and not self.metadata:
            raise ConfigError("--steps balance needs --metadata FILE (a JSON list or one entry per line)")
        if ("clip" in self.steps or "embed" in self.steps) and not self.clip_model:
            raise ConfigError("--steps clip/embed need --clip-model NAME_OR_PATH")
        if "clip" in self.steps and (self.clip_threshold is None) == (self.clip_fraction is None):
            raise ConfigError("--steps clip needs exactly one of --clip-threshold or --clip-fraction")
        if self.clip_fraction is not None and not 0 < self.clip_fraction <= 1:
            raise ConfigError(f"--clip-fraction must be in (0, 1], got {self.clip_fraction}")
        if self.phash_size < 4 or not 0 <= self.phash_threshold < self.phash_size ** 2 // 2:
            raise ConfigError(f"--phash-threshold {self.phash_threshold} must be in [0, "
                              f"{self.phash_size ** 2 // 2}) for --phash-size {self.phash_size} (>= 4)")
        if self.match_method not in ("aho", "tokens"):
            raise ConfigError(f"--match-method must be aho or tokens, got {self.match_method!r}")
        if not 0 < self.balance_t < float("inf"):
            raise ConfigError(f"--t must be a positive number, got {self.balance_t}")
        for flag, value, low in (("--min-words", self.min_words, 0), ("--min-chars", self.min_chars, 0),
                                 ("--min-side", self.min_side, 0), ("--max-aspect", self.max_aspect, 1),
                                 ("--batch-size", self.batch_size, 1), ("--workers", self.workers, 1),
                                 ("--embed-threshold", self.embed_threshold, -1)):
            if not low <= value < float("inf"):  # also refuses nan
                raise ConfigError(f"{flag} must be >= {low}, got {value}")
        if self.embed_threshold > 1:
            raise ConfigError(f"--embed-threshold is a cosine similarity in [-1, 1], got {self.embed_threshold}")


@dataclass
class CurateResult:
    out_dir: Path
    stats: dict[str, Any]
    features: Features
    decisions: dict[str, Decision]
    reason_of: dict[int, tuple[str, str, str]]  # position -> (step, reason, detail)
    entries: list[str] = field(default_factory=list)
    step_cfg: StepConfig | None = None


def _records(urls: list[str], shard_ids: Iterable[int] | None = None,
             ) -> Iterator[tuple[int, dict | DataError]]:
    """(shard ordinal, raw sample or the error that ended the shard), identical on every pass."""
    from clipstack.data.shards import iter_shard

    for shard_idx in range(len(urls)) if shard_ids is None else shard_ids:
        url = urls[shard_idx]
        errors: list[DataError] = []
        for raw in iter_shard(url, on_error=errors.append):
            yield shard_idx, raw
        for err in errors:
            yield shard_idx, err


def _read_one(raw: dict, feats: Features, cfg: CurateConfig, want_image: bool):
    """Decode one raw sample into features; returns (caption, PIL image or None) for the batch stages."""
    from clipstack.curate.dedup import caption_key, phash_int, sha256_hex
    from clipstack.curate.filters import BasicConfig, basic_reason, decode_caption, load_image, text_reason
    from clipstack.data.shards import decode_sample

    key = str(raw.get("__key__"))
    caption, caption_bad = decode_caption(raw.get("txt"), "")
    sample, read_reason, read_detail = None, None, ""
    try:
        if caption_bad:
            raw = {k: v for k, v in raw.items() if k != "txt"}  # decode the rest; the caption is the reason
        sample = decode_sample(raw)
    except DataError as exn:
        read_reason, read_detail = "unreadable", str(exn)
    meta = sample.meta if sample else {}
    if sample is not None and caption is not None and "txt" not in raw:
        caption = sample.caption
    feats.keys.append(key)
    feats.uids.append(uid_for(key, meta))
    feats.non_utf8.append(caption is None)
    # Hashes and CLIP scores do not need full resolution: decode JPEGs at a reduced DCT scale.
    decoded, size = load_image(sample.image, draft=cfg.decode_side) if sample is not None else (None, None)
    if sample is not None and size is None:
        read_reason, read_detail = "corrupt_image", "the image bytes do not decode"
    if read_reason is None and caption is None and "text" not in cfg.steps:
        read_reason = "non_utf8"  # cannot be written as a caption, with or without the text filter
        read_detail = "the caption is not UTF-8"
    feats.read_reason.append(read_reason)
    feats.read_detail.append(read_detail)
    text = caption or ""
    feats.text_reason.append(text_reason(caption) if read_reason is None else None)
    basic = BasicConfig(cfg.min_words, cfg.min_chars, cfg.min_side, cfg.max_aspect)
    feats.basic_reason.append(basic_reason(text, size, basic) if size is not None else None)
    feats.sha.append(sha256_hex(sample.image) if sample is not None else "")
    feats.caption_key.append(caption_key(text))
    image = None
    if size is not None and ("phash" in cfg.steps or want_image):
        image = decoded.convert("RGB")
    feats.phash.append(phash_int(image, cfg.phash_size) if image is not None and "phash" in cfg.steps else 0)
    return text, (image if want_image else None)


def _expected_count(urls: list[str]) -> int | None:
    """Samples in the input according to the shards' `_stats.json` files (for the progress bar)."""
    import json

    total = 0
    for url in urls:
        stats = Path(url).with_name(Path(url).stem + "_stats.json")
        try:
            total += int(json.loads(stats.read_text(encoding="utf-8"))["successes"])
        except (OSError, ValueError, KeyError, TypeError):
            return None
    return total


def extract_features(urls: list[str], cfg: CurateConfig, matcher=None, scorer=None,
                     spill_dir: str | os.PathLike | None = None) -> Features:
    """Pass 1: features for every sample (and one record per shard-ending read error).

    With `cfg.workers > 1` (and no CLIP model, which runs in this process), shards are read by forked
    worker processes that inherit the matcher, and their features are merged in shard order, so the
    result is identical to a single-process run."""
    from clipstack.progress import progress

    feats = Features(matches=MatchStore(spill_dir))
    bar = progress(total=_expected_count(urls), desc="curate: read", unit="sample")
    workers = min(cfg.workers, len(urls))
    if workers > 1 and scorer is None:
        import multiprocessing as mp

        global _FORK_STATE
        _FORK_STATE = (urls, cfg, matcher)
        try:
            with mp.get_context("fork").Pool(workers) as pool:
                for part in pool.imap(_shard_features, range(len(urls))):
                    _merge(feats, part)
                    bar.update(len(part))
        finally:
            _FORK_STATE = None
    else:
        _extract(urls, range(len(urls)), cfg, matcher, scorer, feats, bar)
    bar.close()
    return feats


_FORK_STATE: tuple | None = None  # (urls, cfg, matcher), inherited by forked workers


def _shard_features(shard_idx: int) -> Features:
    urls, cfg, matcher = _FORK_STATE
    return _extract(urls, [shard_idx], cfg, matcher, None, Features(), None)


_LIST_FIELDS = [f.name for f in dataclasses.fields(Features) if f.name not in ("matches", "embeddings")]


def _merge(into: Features, part: Features) -> None:
    for name in _LIST_FIELDS:
        getattr(into, name).extend(getattr(part, name))
    into.embeddings.extend(part.embeddings)
    for _, off, ids in part.matches:
        into.matches.add(off, ids)


def _extract(urls, shard_ids, cfg: CurateConfig, matcher, scorer, feats: Features, bar) -> Features:
    want_image = scorer is not None
    batch_text: list[str] = []
    batch_img: list = []

    def flush():
        if matcher is not None:
            feats.matches.add(*matcher.match(batch_text))
        if scorer is not None:
            scores = np.full(len(batch_text), np.nan, dtype=np.float32)
            emb = np.zeros((len(batch_text), int(scorer.model.embed_dim)), dtype=np.float32)
            ok = [j for j, im in enumerate(batch_img) if im is not None]
            if ok:
                img_e, txt_e = scorer.embed([batch_img[j] for j in ok], [batch_text[j] for j in ok])
                scores[ok] = np.sum(img_e * txt_e, axis=1)
                emb[ok] = img_e
            feats.clip_score.extend(scores.tolist())
            feats.embeddings.append(emb)
        batch_text.clear()
        batch_img.clear()

    from clipstack.data.shards import SampleError

    for shard_idx, rec in _records(urls, shard_ids):
        feats.shard.append(shard_idx)
        if isinstance(rec, DataError):
            # one sample the reader skipped (a key that is not UTF-8), or the error that ended a shard
            one = isinstance(rec, SampleError) and rec.key is not None
            key = (rec.key.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace") if one
                   else f"{Path(urls[shard_idx]).name}:unreadable")
            for name, value in (("keys", key), ("uids", uid_for(key, {})), ("read_detail", str(rec)),
                                ("non_utf8", False), ("read_reason", rec.reason if one else "unreadable_shard"),
                                ("text_reason", None), ("basic_reason", None), ("sha", ""),
                                ("caption_key", ""), ("phash", 0)):
                getattr(feats, name).append(value)
            text, image = "", None
        else:
            text, image = _read_one(rec, feats, cfg, want_image)
        batch_text.append(text)
        batch_img.append(image)
        if bar is not None:
            bar.update(1)
        if len(batch_text) >= cfg.batch_size:
            flush()
    if batch_text:
        flush()
    return feats


def curate(in_shards, out_dir: str | os.PathLike, cfg: CurateConfig) -> CurateResult:
    """Curate `in_shards` (a folder, brace pattern or list of tars) into `out_dir`; see module doc."""
    from clipstack.curate.matching import load_metadata, make_matcher
    from clipstack.data.shards import expand_urls

    cfg.validate()
    urls = expand_urls(in_shards)
    if not urls:
        raise DataError(f"{in_shards}: no .tar shards found")
    missing = [u for u in urls if not Path(u).exists()]
    if missing:
        raise DataError(f"{missing[0]}: shard not found ({len(missing)} of {len(urls)} missing)")
    out = Path(out_dir)
    entries = load_metadata(cfg.metadata) if cfg.metadata else []
    matcher = make_matcher(entries, cfg.match_method) if "balance" in cfg.steps else None
    scorer = None
    if "clip" in cfg.steps or "embed" in cfg.steps:
        from clipstack.curate.filters import ClipScorer

        scorer = ClipScorer(cfg.clip_model, cfg.clip_pretrained, cfg.device)
        side = int(max(getattr(scorer.model, "image_size", (224, 224))))
        if cfg.decode_side:
            cfg = dataclasses.replace(cfg, decode_side=max(cfg.decode_side, 2 * side))
    work = out / ".work"  # metadata matches spilled to disk; removed when the run succeeds
    feats = extract_features(urls, cfg, matcher, scorer, spill_dir=work)
    step_cfg = StepConfig(cfg.phash_threshold, cfg.phash_size, cfg.embed_threshold, cfg.clip_threshold,
                          cfg.clip_fraction, cfg.balance_t, cfg.seed, len(entries))
    n = len(feats)
    readable = np.array([r is None for r in feats.read_reason], dtype=bool)
    reason_of: dict[int, tuple[str, str, str]] = {
        i: ("read", feats.read_reason[i], feats.read_detail[i]) for i in np.flatnonzero(~readable)}
    alive = readable.copy()
    decisions: dict[str, Decision] = {}
    sizes = [("in", n), ("read", int(alive.sum()))]
    for step in cfg.steps:
        dec = decide(step, feats, alive, step_cfg)
        for i in np.flatnonzero(dec.drop):
            reason_of[int(i)] = (step, dec.reasons[int(i)], dec.details.get(int(i), ""))
        alive &= ~dec.drop
        decisions[step] = dec
        sizes.append((step, int(alive.sum())))
    stats = _write_outputs(urls, out, feats, alive, reason_of, sizes, cfg, decisions)
    if work.is_dir():
        import shutil

        shutil.rmtree(work)
    return CurateResult(out, stats, feats, decisions, reason_of, entries, step_cfg)


def _write_outputs(urls, out: Path, feats: Features, alive: np.ndarray, reason_of, sizes, cfg, decisions):
    """Pass 2: curated shards, subset file, ledger and stats."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from clipstack.curate.uids import write_subset
    from clipstack.data.shards import Drop, decode_sample, write_shard, write_sizes
    from clipstack.io import atomic_path, write_json
    from clipstack.progress import progress

    shards_dir = out / "shards"
    shards_dir.mkdir(parents=True, exist_ok=True)
    records = iter(_records(urls))
    pos = 0
    bar = progress(total=len(feats), desc="curate: write", unit="sample")
    for shard_idx in range(len(urls)):
        drops: list[Drop] = []

        def kept_samples(shard_idx=shard_idx, drops=drops):
            nonlocal pos
            while pos < len(feats) and feats.shard[pos] == shard_idx:
                _, rec = next(records)
                i, pos = pos, pos + 1
                bar.update(1)
                if alive[i]:
                    sample = decode_sample(rec)
                    sample.meta["uid"] = feats.uids[i]
                    if "txt" in rec:
                        sample.captions = [rec["txt"].decode("utf-8")] + sample.captions[1:]
                    yield sample
                else:
                    step, reason, detail = reason_of[i]
                    drops.append(Drop(feats.keys[i], f"{step}:{reason}", detail, {"uid": feats.uids[i]}))

        write_shard(shards_dir, shard_idx, kept_samples(), drops)
    bar.close()
    write_sizes(shards_dir)
    if pos != len(feats):
        raise DataError(f"{urls}: shards changed between the two curation passes ({pos} != {len(feats)})")
    write_subset(out / "subset.npy", [feats.uids[i] for i in np.flatnonzero(alive)])
    rows = sorted(reason_of.items())
    table = pa.table({
        "uid": [feats.uids[i] for i, _ in rows], "key": [feats.keys[i] for i, _ in rows],
        "shard": [Path(urls[feats.shard[i]]).name for i, _ in rows],
        "step": [r[0] for _, r in rows], "reason": [r[1] for _, r in rows],
        "detail": [r[2] for _, r in rows],
    })
    with atomic_path(out / "ledger.parquet") as tmp:
        pq.write_table(table, tmp)
    by_step: dict[str, dict[str, int]] = {}
    for step, reason, _ in reason_of.values():
        by_step.setdefault(step, Counter())[reason] += 1
    stats = {
        "in": len(feats), "kept": int(alive.sum()), "dropped": len(reason_of),
        "steps": list(cfg.steps), "sizes_after_step": dict(sizes),
        "dropped_by_step": {s: dict(sorted(c.items())) for s, c in by_step.items()},
        "input_shards": [str(u) for u in urls], "output_shards": str(shards_dir),
        "subset": str(out / "subset.npy"), "ledger": str(out / "ledger.parquet"),
    }
    for step, dec in decisions.items():
        info = {k: v for k, v in dec.info.items() if not isinstance(v, np.ndarray)}
        if info:
            stats.setdefault("step_info", {})[step] = info
    if stats["in"] != stats["kept"] + stats["dropped"]:
        raise AssertionError(f"ledger mismatch: in {stats['in']} != kept {stats['kept']} + dropped")
    write_json(out / "_stats.json", stats)
    return stats
