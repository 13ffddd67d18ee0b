"""Read a shard directory back with the two external readers (round-trip checks, debugging).

``with_webdataset`` uses the ``webdataset`` library; ``with_dali`` a DALI ``fn.readers.webdataset``
CPU pipeline (``device_id=None``) opened with the written index files. Both return, per sample,
(sample id, label, jpeg bytes) in reader order.
"""

from __future__ import annotations

import numpy as np

from ltpipe.shards.format import Manifest, decode_sample_id


def with_webdataset(m: Manifest, split: str) -> list[tuple[int, int, bytes]]:
    import webdataset as wds

    urls = [str(p) for p in m.shard_paths(split)]
    if not urls:
        return []
    # the default .id handler expects ascii digits; ours is int64 bytes, so register ours first
    ds = (wds.WebDataset(urls, shardshuffle=False)
          .decode(wds.handle_extension("id", decode_sample_id))
          .to_tuple("id", "cls", "jpg"))
    return [(sid, int(cls), bytes(jpg)) for sid, cls, jpg in ds]


def with_dali(m: Manifest, split: str, batch_size: int = 64) -> list[tuple[int, int, bytes]]:
    from nvidia.dali import fn, pipeline_def, types

    n = m.split(split).num_samples
    if n == 0:
        return []

    @pipeline_def(batch_size=batch_size, num_threads=1, device_id=None, prefetch_queue_depth=1)
    def pipe():
        return tuple(fn.readers.webdataset(
            paths=[str(p) for p in m.shard_paths(split)],
            index_paths=[str(p) for p in m.dali_index_paths(split)],
            ext=["id", "cls", "jpg"], dtypes=[types.INT64, types.UINT8, types.UINT8],
            name="reader"))

    p = pipe()
    p.build()
    out: list[tuple[int, int, bytes]] = []
    while len(out) < n:  # one epoch, in reader order (the last batch pads by wrapping)
        ids, cls, jpg = p.run()
        for i in range(len(ids)):
            if len(out) == n:
                break
            out.append((int(np.asarray(ids[i])[0]), int(bytes(np.asarray(cls[i]))),
                        bytes(np.asarray(jpg[i]))))
    return out
