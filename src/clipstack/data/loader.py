"""The training-time loader: WebDataset shards -> deterministic, resumable batches of (images, tokens).

Every random choice is a pure function of (seed, epoch, rank, worker) or of a sample's identity, never
of wall-clock order: the shard order of an epoch, each reader's shard share, the shuffle buffer, the
source mix, the caption drawn and the augmentation of a sample (seeded by source, key, epoch and pass).
So the stream of an epoch is fixed, and resuming at step s only has to replay each worker's stream up to
its share of the first s batches (without transforming or tokenizing it) to continue bit for bit.

Readers are (rank, worker) pairs. Shards are split so no two readers of an epoch share a shard; with
fewer shards than readers the loader refuses with a message (or, with `resampled`, draws shards with
replacement). An epoch is a fixed number of steps; a reader whose share runs out first starts another
pass over its own shards and the re-read samples are counted (`repeated`). Corrupt samples and unreadable
tars are skipped and counted, never fatal; counts ride along with each batch so the loop can log them.
"""

from __future__ import annotations

import hashlib
import json
import random
import tarfile
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clipstack.data.shards import IMAGE_EXTS, decode_sample, expand_urls, image_bytes_to_pil, iter_shard
from clipstack.errors import DataError

__all__ = ["Source", "LoaderSpec", "TrainLoader", "resolve_sources", "count_samples", "derive_seed",
           "reader_shards", "steps_per_epoch"]


def derive_seed(*parts: Any) -> int:
    """A 63-bit seed from any tuple of ints/strings (stable across processes, unlike `hash`)."""
    digest = hashlib.blake2b(repr(parts).encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


@dataclass
class Source:
    """One dataset in the mix: its expanded shard list, sample weight and per-shard sample counts."""

    name: str
    urls: list[str]
    weight: float = 1.0
    sizes: list[int] = field(default_factory=list)

    @property
    def num_samples(self) -> int:
        return sum(self.sizes)


def _is_local(url: str) -> bool:
    return "://" not in url and not url.startswith("pipe:")


def count_samples(url: str) -> int:
    """Samples in one shard: from `sizes.json` beside it when listed there, else by scanning tar headers."""
    path = Path(url)
    sizes_file = path.parent / "sizes.json"
    if sizes_file.is_file():
        try:
            sizes = json.loads(sizes_file.read_text(encoding="utf-8"))
            if path.name in sizes:
                return int(sizes[path.name])
        except (json.JSONDecodeError, ValueError, TypeError):
            pass  # a broken sizes.json is not fatal: count the tar itself
    keys = set()
    try:
        with tarfile.open(path, "r|") as tar:
            for member in tar:
                stem, _, ext = member.name.rpartition("/")[2].partition(".")
                if ext.lower() in IMAGE_EXTS:
                    keys.add(stem)
    except (tarfile.TarError, OSError, EOFError):
        pass  # a truncated tar counts what it has; reading it later skips and counts the rest
    return len(keys)


def resolve_sources(specs: list[tuple[str, Any, float]]) -> list[Source]:
    """(name, urls, weight) triples -> `Source`s, expanded and counted; a missing shard names its path."""
    sources = []
    for i, (name, urls, weight) in enumerate(specs):
        label = name or f"source{i}"
        expanded = expand_urls(urls)
        if not expanded:
            raise DataError(f"{label}: {urls!r} matched no shards")
        for url in expanded:
            if _is_local(url) and not Path(url).is_file():
                raise DataError(f"{url}: shard not found (from {label} = {urls!r})")
        sizes = [count_samples(u) if _is_local(u) else 0 for u in expanded]
        sources.append(Source(name=label, urls=expanded, weight=float(weight), sizes=sizes))
    return sources


def steps_per_epoch(sources: list[Source], global_batch: int) -> int:
    total = sum(s.num_samples for s in sources)
    steps = total // global_batch
    if steps < 1:
        raise DataError(f"data: {total} samples in all sources are fewer than one global batch of "
                        f"{global_batch}; lower data.batch_size or add shards")
    return steps


def reader_shards(source: Source, src_idx: int, seed: int, epoch: int, reader: int, readers: int,
                  shuffle_shards: bool) -> list[str]:
    """The shards reader `reader` of `readers` owns this epoch (disjoint across readers)."""
    order = list(source.urls)
    if shuffle_shards:
        random.Random(derive_seed(seed, "shards", epoch, src_idx)).shuffle(order)
    if len(order) < readers:
        raise DataError(
            f"{source.name}: {len(order)} shard(s) for {readers} readers (ranks x data.workers): each "
            f"reader needs its own shard. Lower data.workers, split the data into more shards, or set "
            f"data.resampled: true to draw shards with replacement")
    return order[reader::readers]


@dataclass
class LoaderSpec:
    """Everything that fixes the sample stream (plus the per-sample functions)."""

    sources: list[Source]
    batch_size: int  # per rank
    transform: Callable[[Any], Any]  # PIL image -> FloatTensor[3, H, W]
    tokenizer: Callable[[list[str]], Any]  # list of captions -> LongTensor[N, ctx]
    seed: int = 0
    rank: int = 0
    world_size: int = 1
    workers: int = 0
    shuffle_buffer: int = 0
    shuffle_shards: bool = True
    resampled: bool = False
    captions_per_image: int = 1
    steps: int = 0  # steps per epoch; 0 = from the sample counts
    negatives: Any = None  # a `WordSwap`: one hard-negative caption per image, after the k captions


class _Stats:
    """Counts since the last batch; sent with each batch (workers cannot share memory with the loop)."""

    def __init__(self) -> None:
        self.counts: Counter = Counter()
        self.per_source: Counter = Counter()
        self.per_shard: Counter = Counter()
        self.shard_errors: dict[str, str] = {}  # url -> why it could not be read (first message)

    def pop(self) -> dict[str, Any]:
        out = {"counts": dict(self.counts), "per_source": dict(self.per_source),
               "per_shard": dict(self.per_shard), "shard_errors": dict(self.shard_errors)}
        self.__init__()
        return out


class TrainLoader:
    """One epoch of batches for this rank, from step `start_step` on; iterate it once.

    Each batch is a dict: `images` FloatTensor[B, 3, H, W], `texts` LongTensor[B, ctx] (or
    [B, k, ctx] with k captions per image), `keys`, and `stats` (counts since the previous batch).
    """

    def __init__(self, spec: LoaderSpec, epoch: int, start_step: int = 0,
                 positions: dict[int, int] | None = None) -> None:
        """`positions` (reader -> raw samples taken, from the batches' `stats["position"]`) lets a
        resumed epoch skip ahead without decoding images; without it the skip decodes to find the bad."""
        self.positions = dict(positions or {})
        self.spec = spec
        self.epoch = epoch
        self.steps = spec.steps or steps_per_epoch(spec.sources, spec.batch_size * spec.world_size)
        if not 0 <= start_step <= self.steps:
            raise ValueError(f"start_step {start_step} outside epoch of {self.steps} steps")
        self.start_step = start_step
        if not spec.resampled:  # fail here, in the main process, with the message
            for i, src in enumerate(spec.sources):
                reader_shards(src, i, spec.seed, epoch, 0, spec.world_size * max(1, spec.workers),
                              spec.shuffle_shards)

    def __len__(self) -> int:
        return self.steps - self.start_step

    def __iter__(self) -> Iterator[dict[str, Any]]:
        import torch
        from torch.utils.data import DataLoader

        if len(self) == 0:
            return iter(())
        workers = self.spec.workers
        dataset = _EpochDataset(self.spec, self.epoch, self.start_step, self.steps, self.positions)
        if workers == 0:
            return iter(dataset)
        # A private generator: the DataLoader's base-seed draw must not move the global torch RNG, or a
        # resumed run (which builds its iterator mid-epoch) would drift from an uninterrupted one.
        loader = DataLoader(dataset, batch_size=None, num_workers=workers, generator=torch.Generator(),
                            prefetch_factor=2, persistent_workers=False, in_order=True)
        return iter(loader)


def _iterable_base():
    from torch.utils.data import IterableDataset

    return IterableDataset


class _EpochDataset(_iterable_base()):  # type: ignore[misc]
    def __init__(self, spec: LoaderSpec, epoch: int, start_step: int, steps: int,
                 positions: dict[int, int]) -> None:
        self.spec, self.epoch, self.start_step, self.steps = spec, epoch, start_step, steps
        self.positions = positions

    def __iter__(self) -> Iterator[dict[str, Any]]:
        from torch.utils.data import get_worker_info

        info = get_worker_info()
        spec = self.spec
        num_workers = max(1, spec.workers)
        physical = info.id if info is not None else 0
        # The DataLoader hands batch i to worker i % W; batch i is global step start + i, so the worker
        # that plays logical worker l = step % W is (l - start) % W. Logical workers own the streams.
        logical = (physical + self.start_step) % num_workers
        mine = [s for s in range(self.steps) if s % num_workers == logical]
        skip = sum(1 for s in mine if s < self.start_step)
        todo = len(mine) - skip
        reader = spec.rank * num_workers + logical
        stream = _ReaderStream(spec, self.epoch, reader, spec.world_size * num_workers)
        if skip and reader in self.positions:
            stream.skip_raw(int(self.positions[reader]))
        else:
            stream.skip(skip * spec.batch_size)
        for _ in range(todo):
            yield stream.batch()


class _ReaderStream:
    """One reader's endless sample stream for one epoch: shards -> samples -> mix -> shuffle buffer."""

    def __init__(self, spec: LoaderSpec, epoch: int, reader: int, readers: int) -> None:
        self.spec, self.epoch, self.reader, self.readers = spec, epoch, reader, readers
        self.stats = _Stats()
        self.raw_taken = 0  # samples pulled from the mixed, shuffled stream (the resumable position)
        self._sources = [self._source_stream(i, src) for i, src in enumerate(spec.sources)]
        self._mix_rng = random.Random(derive_seed(spec.seed, "mix", epoch, reader))
        self._weights = [s.weight for s in spec.sources]

    def _shards(self, src_idx: int, src: Source) -> Iterator[tuple[str, int]]:
        spec = self.spec
        if spec.resampled:
            rng = random.Random(derive_seed(spec.seed, "resample", self.epoch, src_idx, self.reader))
            draws = 0
            while True:
                yield rng.choice(src.urls), draws // max(1, len(src.urls))
                draws += 1
        mine = reader_shards(src, src_idx, spec.seed, self.epoch, self.reader, self.readers,
                             spec.shuffle_shards)
        passes = 0
        while True:
            order = list(mine)
            if passes:
                random.Random(derive_seed(spec.seed, "pass", self.epoch, src_idx, self.reader, passes)).shuffle(order)
            for url in order:
                yield url, passes
            passes += 1

    def _source_stream(self, src_idx: int, src: Source) -> Iterator[tuple]:
        """Decoded samples of one source, shuffled through a buffer that drains at the end of each pass
        over the reader's shards, so an epoch emits every sample of a pass before re-reading any."""
        size = self.spec.shuffle_buffer
        rng = random.Random(derive_seed(self.spec.seed, "buffer", self.epoch, src_idx, self.reader))
        buffer: list[tuple] = []
        current = None
        for item in self._raw_source(src_idx, src):
            if size <= 1:
                yield item
                continue
            if current is not None and item[2] != current:  # a new pass: drain the old one first
                while buffer:
                    yield _pop_random(buffer, rng)
            current = item[2]
            buffer.append(item)
            if len(buffer) >= size:
                yield _pop_random(buffer, rng)

    def _raw_source(self, src_idx: int, src: Source) -> Iterator[tuple]:
        empty_run = 0
        for url, passes in self._shards(src_idx, src):
            got = 0

            def on_error(err: DataError, url: str = url) -> None:
                if getattr(err, "reason", None) == "non_utf8_key":  # one sample skipped; the shard goes on
                    self.stats.counts["seen"] += 1
                    self.stats.counts["corrupt"] += 1
                    return
                self.stats.counts["unreadable_shards"] += 1
                self.stats.shard_errors.setdefault(url, str(err))

            for raw in iter_shard(url, on_error=on_error):
                self.stats.counts["seen"] += 1
                try:
                    sample = decode_sample(raw)
                except DataError:
                    self.stats.counts["corrupt"] += 1
                    continue
                got += 1
                yield (src_idx, url, passes, sample)
            empty_run = 0 if got else empty_run + 1
            if empty_run >= max(len(src.urls), 1) * 2:
                raise DataError(f"{src.name}: no readable samples in {empty_run} shards in a row "
                                f"(e.g. {url}); check the shards")

    def _next_sample(self) -> tuple:
        if len(self._sources) == 1:
            return next(self._sources[0])
        idx = self._mix_rng.choices(range(len(self._sources)), weights=self._weights)[0]
        return next(self._sources[idx])

    def _next_good(self) -> tuple:
        """The next sample whose image decodes and that has a caption (bad ones counted)."""
        while True:
            src_idx, url, passes, sample = self._next_sample()
            self.raw_taken += 1
            if not any(c.strip() for c in sample.captions):
                self.stats.counts["no_caption"] += 1
                continue
            try:
                image = image_bytes_to_pil(sample.image)
            except Exception:  # PIL raises many types for bad bytes; a bad image is skipped, not fatal
                self.stats.counts["corrupt"] += 1
                continue
            return src_idx, url, passes, sample, image

    def skip(self, n: int) -> None:
        """Replay `n` good samples without transforming them (their counts were logged before)."""
        for _ in range(n):
            self._next_good()
        self.stats.pop()

    def skip_raw(self, n: int) -> None:
        """Replay exactly `n` raw samples (a saved position): tar reading only, no image decoding."""
        for _ in range(n):
            self._next_sample()
        self.raw_taken = n
        self.stats.pop()

    def batch(self) -> dict[str, Any]:
        import torch

        spec, k = self.spec, self.spec.captions_per_image
        images, captions, keys = [], [], []
        for _ in range(spec.batch_size):
            src_idx, url, passes, sample, image = self._next_good()
            src = spec.sources[src_idx]
            # Seeded by identity, so a sample's crop and caption do not depend on the reader topology.
            seed = derive_seed(spec.seed, "sample", self.epoch, src_idx, sample.key, passes)
            rng = random.Random(seed)
            texts = [c for c in sample.captions if c.strip()]
            picks = rng.sample(texts, k) if len(texts) >= k else rng.choices(texts, k=k)
            captions.extend(picks)
            if spec.negatives:
                negative = spec.negatives.swap(picks[0], rng)
                # An empty caption stands in when no word swaps: a harmless, easy negative that keeps
                # the batch rectangular.
                captions.append(negative or "")
                self.stats.counts["hard_negative" if negative else "no_hard_negative"] += 1
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                images.append(spec.transform(image))
            keys.append(sample.key)
            self.stats.counts["kept"] += 1
            if passes:
                self.stats.counts["repeated"] += 1
            self.stats.per_source[src.name] += 1
            self.stats.per_shard[Path(url).name if _is_local(url) else url] += 1
        tokens = spec.tokenizer(captions)
        slots = k + (1 if spec.negatives else 0)
        if slots > 1:
            tokens = tokens.view(spec.batch_size, slots, -1)
        stats = self.stats.pop()
        stats["position"] = {self.reader: self.raw_taken}
        return {"images": torch.stack(images), "texts": tokens, "keys": keys, "stats": stats}


def _pop_random(buffer: list, rng: random.Random) -> Any:
    i = rng.randrange(len(buffer))
    buffer[i], buffer[-1] = buffer[-1], buffer[i]  # O(1) removal; order is random anyway
    return buffer.pop()


def merge_stats(total: dict[str, Any], batch_stats: dict[str, Any]) -> dict[str, Any]:
    """Add one batch's `stats` into a running total (the data position saved in checkpoints)."""
    for part in ("counts", "per_source", "per_shard"):
        bucket = total.setdefault(part, {})
        for key, value in batch_stats.get(part, {}).items():
            bucket[key] = bucket.get(key, 0) + int(value)
    return total
