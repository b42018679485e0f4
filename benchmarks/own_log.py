"""A seeded e-commerce interaction log, as a user would bring one: ``customer,sku,ts``.

    python -m benchmarks.own_log --output=/tmp/own_log/log.csv    # ~25,000 x 10,000, mean 9
    python -m benchmarks.own_log --output=log.csv --users=100000 --items=60000 --mean_length=20

One CSV file with the columns ``customer,sku,ts`` (ISO 8601 timestamps), no
ratings and no item categories: the shape of the log of issue 26 (after the
5/5 k-core: 24,303 customers, 10,675 SKUs, 9.3 events per customer). Read it
with ``--dataset=interactions --data_dir=<the file> --user_col=customer
--item_col=sku --time_col=ts``.

What makes it look like a real log (and gives the models something to learn):
the catalog and the customers' tastes are `pipelines.synthetic`'s (Zipf item
popularity, each customer strongly liking 1-3 of ``--categories`` hidden
categories, items followed by their "successor" items with probability
``--markov_p``), and the events come in **sessions**: a new session starts
with probability ``--session_break`` before each event, days after the last
one (lognormal, median 3 days), and events inside a session follow each
other within minutes (median 90 s). Lengths are at least 5 with an exponential
tail (mean ``--mean_length``, at most 500); SKU popularity is Zipf with
exponent 0.8 over ``--items`` SKUs, so the 5/5 k-core drops the rarest
(`kcore_shape` prints what it keeps). The defaults (25,000 customers, 12,000
SKUs, mean 9.2) keep 24,592 customers, 9,952 SKUs and 222,478 rows, 9.0
events per customer, the top 1% of SKUs holding 18% of the events.

The same arguments and seed write the same file.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import math
import os
import sys

import numpy as np

from pipelines import synthetic

__all__ = ["OwnLogConfig", "session_timestamps", "write_own_log", "kcore_shape", "main"]

_START = datetime.datetime(2023, 1, 1, tzinfo=datetime.UTC)
_SPAN_S = 365 * 86400  # first events spread over a year
_IN_SESSION_MEDIAN_S = 90.0
_BETWEEN_SESSIONS_MEDIAN_S = 3 * 86400.0
_GAP_SIGMA = 1.0


@dataclasses.dataclass(frozen=True)
class OwnLogConfig:
    """The log's shape: ``users`` customers, ``items`` SKUs, ``mean_length`` events each."""

    users: int = 25_000
    items: int = 12_000
    mean_length: float = 9.2
    categories: int = 60
    zipf_exponent: float = 0.8
    markov_p: float = 0.4
    session_break: float = 0.35
    seed: int = 0

    def synthetic(self) -> synthetic.SyntheticConfig:
        return synthetic.SyntheticConfig(
            num_users=self.users,
            num_items=self.items,
            num_genres=self.categories,
            min_len=5,
            mean_len=self.mean_length,
            max_len_seq=500,
            markov_p=self.markov_p,
            seed=self.seed,
            block_size=5000,
            zipf_exponent=self.zipf_exponent,
        )


def session_timestamps(rng: np.random.Generator, lengths: np.ndarray, session_break: float):
    """``[sum(lengths)]`` Unix seconds, user-major: each user's first event uniform over a
    year, then gaps of minutes inside a session and of days between sessions."""
    n = int(lengths.sum())
    first = np.zeros(n, bool)
    first[np.cumsum(lengths)[:-1]] = True
    first[0] = True
    new_session = rng.random(n) < session_break
    gaps = np.where(
        new_session,
        rng.lognormal(math.log(_BETWEEN_SESSIONS_MEDIAN_S), _GAP_SIGMA, n),
        rng.lognormal(math.log(_IN_SESSION_MEDIAN_S), _GAP_SIGMA, n),
    )
    gaps = np.maximum(np.rint(gaps), 1).astype(np.int64)
    start = rng.integers(0, _SPAN_S, int(first.sum()))
    gaps[first] = 0
    t = np.cumsum(gaps)
    t -= np.repeat(t[first], lengths)  # every user's clock starts at 0
    return t + np.repeat(start, lengths) + int(_START.timestamp())


def write_own_log(path: str, config: OwnLogConfig = OwnLogConfig()) -> dict:
    """Writes the log to ``path`` (CSV, header ``customer,sku,ts``); returns its counts."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    syn = config.synthetic()
    rng = np.random.default_rng(np.random.SeedSequence(config.seed, spawn_key=(26,)))
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    rows = 0
    items: set = set()
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(b"customer,sku,ts\n")
        for block in range(synthetic.num_blocks(syn)):
            columns, _ = synthetic.generate_block(syn, block)
            users = columns["user"]
            _, starts, lengths = np.unique(users, return_index=True, return_counts=True)
            lengths = lengths[np.argsort(starts)]  # user-major: first-appearance order
            ts = session_timestamps(rng, lengths, config.session_break)
            iso = np.datetime_as_string(ts.astype("datetime64[s]"), unit="s")
            table = pa.table(
                {
                    "customer": np.char.add("c", np.char.lstrip(users.astype(str), "u")),
                    "sku": np.char.add("sku", np.char.lstrip(columns["item"].astype(str), "i")),
                    "ts": np.char.add(iso.astype(str), "Z"),
                }
            )
            options = pacsv.WriteOptions(include_header=False, quoting_style="none")
            pacsv.write_csv(table, f, options)
            rows += len(users)
            items.update(np.unique(columns["item"]).tolist())
    os.replace(tmp, path)
    return {"path": path, "rows": rows, "users": config.users, "items": len(items)}


def kcore_shape(path: str, k_user: int = 5, k_item: int = 5) -> dict:
    """Users, items and rows the iterated ``k_user``/``k_item`` k-core keeps (as
    `pipelines.preprocess`'s defaults would), and the mean events per user."""
    import pyarrow.csv as pacsv

    table = pacsv.read_csv(path)
    column = lambda name: table.column(name).to_numpy(zero_copy_only=False)  # noqa: E731
    user = np.unique(column("customer"), return_inverse=True)[1]
    item = np.unique(column("sku"), return_inverse=True)[1]
    keep = np.ones(user.size, bool)
    while True:
        uc = np.bincount(user[keep], minlength=user.max() + 1)
        ic = np.bincount(item[keep], minlength=item.max() + 1)
        drop = keep & ((uc[user] < k_user) | (ic[item] < k_item))
        if not drop.any():
            break
        keep &= ~drop
    users, items = np.unique(user[keep]).size, np.unique(item[keep]).size
    counts = np.bincount(item[keep])
    counts = np.sort(counts[counts > 0])[::-1]
    return {
        "users": users,
        "items": items,
        "rows": int(keep.sum()),
        "mean_length": float(keep.sum() / max(users, 1)),
        "top_1pct_items_share": float(counts[: max(1, counts.size // 100)].sum() / counts.sum()),
    }


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser("benchmarks.own_log", description=__doc__.split("\n")[0])
    parser.add_argument("--output", required=True, help="CSV file to write")
    defaults = OwnLogConfig()
    for field in dataclasses.fields(OwnLogConfig):
        parser.add_argument(f"--{field.name}", type=type(getattr(defaults, field.name)),
                            default=getattr(defaults, field.name))  # fmt: skip
    args = parser.parse_args(argv)
    names = [f.name for f in dataclasses.fields(OwnLogConfig)]
    config = OwnLogConfig(**{name: getattr(args, name) for name in names})
    written = write_own_log(args.output, config)
    print(f"wrote {written['path']}: {written['rows']} rows, {written['users']} customers, "
          f"{written['items']} SKUs")  # fmt: skip
    shape = kcore_shape(args.output)
    print(f"after the 5/5 k-core: {shape['users']} customers, {shape['items']} SKUs, "
          f"{shape['rows']} rows, {shape['mean_length']:.1f} events per customer; the top 1% "
          f"of SKUs hold {shape['top_1pct_items_share']:.0%} of the events")  # fmt: skip
    return {**written, "kcore": shape}


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
