"""Implicit-feedback datasets: readers, k-core filtering, splits, and the sparse views models need.

Readers (each reports what it dropped or merged, never silently):

* ``read_lightgcn_dir``: the LightGCN / NGCF text format, ``train.txt`` and ``test.txt`` with one line
  per user ``user item item ...`` (0-based ids), as in ``../shared/datasets/gowalla``.
* ``read_movielens``: a MovieLens ``u.data`` (tab-separated user, item, rating, timestamp).
* ``read_recbole_inter``: a RecBole atomic ``.inter`` file (header ``user_id:token item_id:token ...``).

The last two give one interaction list that ``kcore`` filters and ``split_per_user`` splits.
"""

from __future__ import annotations

import os
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from grp_workbench.recsys import RecsysError


@dataclass
class InteractionData:
    """Users × items binary matrices for training, validation (optional) and test."""

    name: str
    n_users: int
    n_items: int
    train: sp.csr_matrix
    test: sp.csr_matrix
    valid: sp.csr_matrix | None = None
    report: dict[str, int] = field(default_factory=dict)  # what the loader dropped or merged, by reason

    @property
    def n_train(self) -> int:
        return int(self.train.nnz)

    def item_popularity(self) -> np.ndarray:
        return np.asarray(self.train.sum(axis=0)).ravel()


def to_csr(users: np.ndarray, items: np.ndarray, n_users: int, n_items: int) -> sp.csr_matrix:
    matrix = sp.csr_matrix((np.ones(len(users), dtype=np.float32), (users, items)), shape=(n_users, n_items))
    matrix.sum_duplicates()
    matrix.data[:] = 1.0
    matrix.sort_indices()
    return matrix


def interaction_keys(matrix: sp.csr_matrix) -> np.ndarray:
    """Sorted int64 keys ``row * n_columns + column`` of a CSR matrix with sorted indices."""
    rows = np.repeat(np.arange(matrix.shape[0], dtype=np.int64), np.diff(matrix.indptr))
    return rows * matrix.shape[1] + matrix.indices


def contains(sorted_keys: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """Boolean array of the same shape as ``queries``: whether each key is in ``sorted_keys``."""
    found = np.searchsorted(sorted_keys, queries)
    return (found < len(sorted_keys)) & (sorted_keys[np.minimum(found, max(len(sorted_keys) - 1, 0))] == queries)


class BPRSampler:
    """Draws BPR triples as the VAT code does: a user uniform over users with training items, one of
    their training items, and a uniform negative they have not interacted with."""

    def __init__(self, train: sp.csr_matrix, rng: np.random.Generator):
        self.train, self.rng = train, rng
        self.degree = np.diff(train.indptr)
        self.users = np.flatnonzero(self.degree > 0)
        self.keys = interaction_keys(train)

    def sample(self, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        n_items = self.train.shape[1]
        users = self.users[self.rng.integers(len(self.users), size=n)]
        offsets = (self.rng.random(n) * self.degree[users]).astype(np.int64)
        pos = self.train.indices[self.train.indptr[users] + offsets]
        neg = self.rng.integers(n_items, size=n)
        while True:  # resample negatives the user has interacted with
            clash = contains(self.keys, users * n_items + neg)
            if not clash.any():
                return users, pos, neg
            neg[clash] = self.rng.integers(n_items, size=int(clash.sum()))


def _report(report: dict[str, int], source: str) -> None:
    dropped = {k: v for k, v in report.items() if v and k not in ("lines", "interactions")}
    if dropped:
        warnings.warn(f"{source}: " + ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in dropped.items()),
                      stacklevel=3)


# ---- LightGCN text format -------------------------------------------------------------------------
def _read_lightgcn_file(path: Path, report: Counter) -> tuple[np.ndarray, np.ndarray, int]:
    """(users, items, largest user id on any line, including lines without items)."""
    if not path.is_file():
        raise RecsysError(f"{path} does not exist; a LightGCN-format dataset folder needs train.txt and test.txt.")
    users, items = [], []
    seen_users = set()
    with open(path) as f:
        for number, line in enumerate(f, start=1):
            tokens = line.split()
            if not tokens:
                continue
            report["lines"] += 1
            try:
                ids = [int(t) for t in tokens]
            except ValueError:
                bad = next(t for t in tokens if not t.lstrip("-").isdigit())
                raise RecsysError(f"{path}:{number}: {bad!r} is not an integer id; each line must read "
                                  "'user item item ...' with 0-based integer ids.") from None
            if min(ids) < 0:
                raise RecsysError(f"{path}:{number}: negative id {min(ids)}; ids must be 0-based non-negative.")
            user, line_items = ids[0], ids[1:]
            if user in seen_users:
                report["repeated_user_lines_merged"] += 1
            seen_users.add(user)
            if not line_items:
                report["users_without_items"] += 1
                continue
            unique = set(line_items)
            report["duplicate_interactions_removed"] += len(line_items) - len(unique)
            users.extend([user] * len(unique))
            items.extend(sorted(unique))
    return np.asarray(users, dtype=np.int64), np.asarray(items, dtype=np.int64), max(seen_users, default=-1)


def _count_lines(path: Path) -> int | None:
    if not path.is_file():
        return None
    with open(path) as f:
        return sum(1 for line in f if line.strip())


def read_lightgcn_dir(folder: str | os.PathLike, name: str | None = None) -> InteractionData:
    """``train.txt`` + ``test.txt``; id ranges from ``user_list.txt`` / ``item_list.txt`` when present."""
    folder = Path(folder)
    report: Counter = Counter()
    train_u, train_i, train_max_user = _read_lightgcn_file(folder / "train.txt", report)
    test_u, test_i, test_max_user = _read_lightgcn_file(folder / "test.txt", report)
    if not len(train_u):
        raise RecsysError(f"{folder / 'train.txt'} holds no interactions.")
    # The list files have a header line; without them the ranges come from the largest ids seen.
    listed_users = _count_lines(folder / "user_list.txt")
    listed_items = _count_lines(folder / "item_list.txt")
    n_users = listed_users - 1 if listed_users else max(train_max_user, test_max_user) + 1
    n_items = listed_items - 1 if listed_items else int(max(train_i.max(), test_i.max(initial=0))) + 1
    for label, ids, limit in (("user", np.array([train_max_user, test_max_user]), n_users),
                              ("item", np.concatenate([train_i, test_i]), n_items)):
        if ids.max() >= limit:
            raise RecsysError(f"{folder}: {label} id {ids.max()} is out of range: {label}_list.txt lists only "
                              f"{limit} {label}s. Fix the id or the list file.")
    train = to_csr(train_u, train_i, n_users, n_items)
    test = to_csr(test_u, test_i, n_users, n_items)
    overlap = train.multiply(test).nnz
    if overlap:
        report["test_interactions_also_in_train_removed"] = overlap
        test = (test - train.multiply(test)).tocsr()
        test.eliminate_zeros()
    report["interactions"] = train.nnz + test.nnz
    _report(report, str(folder))
    return InteractionData(name or folder.name, n_users, n_items, train, test, report=dict(report))


# ---- interaction lists: MovieLens, RecBole ---------------------------------------------------------
@dataclass
class InteractionList:
    """Raw (user, item) pairs with contiguous 0-based ids and the raw ids they map from."""

    source: str
    users: np.ndarray
    items: np.ndarray
    timestamps: np.ndarray | None
    user_ids: np.ndarray  # raw id of each contiguous user index
    item_ids: np.ndarray
    report: dict[str, int] = field(default_factory=dict)


def _from_rows(source: str, rows: list[tuple[str, str, float | None]], report: Counter) -> InteractionList:
    if not rows:
        raise RecsysError(f"{source} holds no interactions.")
    raw_users = np.array([r[0] for r in rows])
    raw_items = np.array([r[1] for r in rows])
    times = np.array([r[2] if r[2] is not None else np.nan for r in rows], dtype=np.float64)
    user_ids, users = np.unique(raw_users, return_inverse=True)
    item_ids, items = np.unique(raw_items, return_inverse=True)
    keys = users.astype(np.int64) * len(item_ids) + items
    _, first = np.unique(keys, return_index=True)  # keep the first occurrence of a repeated pair
    report["duplicate_interactions_removed"] += len(keys) - len(first)
    first = np.sort(first)
    report["interactions"] = len(first)
    _report(report, source)
    return InteractionList(source, users[first].astype(np.int64), items[first].astype(np.int64),
                           None if np.isnan(times).all() else times[first], user_ids, item_ids, dict(report))


def read_movielens(path: str | os.PathLike, min_rating: float = 0.0) -> InteractionList:
    """MovieLens ``u.data``; ratings below ``min_rating`` are dropped (and counted)."""
    path = Path(path)
    if not path.is_file():
        raise RecsysError(f"{path} does not exist; point it at MovieLens' u.data (user, item, rating, timestamp).")
    report: Counter = Counter()
    rows = []
    with open(path) as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            fields = line.split()
            if len(fields) != 4:
                raise RecsysError(f"{path}:{number}: expected 4 fields (user item rating timestamp, separated by "
                                  f"whitespace), found {len(fields)}. Fix or drop that line; for another layout "
                                  "convert the file to RecBole's .inter format (a typed header names the columns).")
            for column, value in (("user id", fields[0]), ("item id", fields[1])):
                if not value.isdigit():
                    raise RecsysError(f"{path}:{number}: {column} {value!r} is not a non-negative integer; u.data "
                                      "holds integer ids. For other ids use RecBole's .inter format "
                                      "(data_format=recbole), whose token columns take any string.")
            values = []
            for column, value in (("rating", fields[2]), ("timestamp", fields[3])):
                try:
                    values.append(float(value))
                except ValueError:
                    raise RecsysError(f"{path}:{number}: {column} {value!r} is not a number.") from None
            rating, stamp = values
            if rating < min_rating:
                report["ratings_below_min_rating_dropped"] += 1
                continue
            rows.append((fields[0], fields[1], stamp))
    return _from_rows(str(path), rows, report)


def read_recbole_inter(path: str | os.PathLike) -> InteractionList:
    """A RecBole ``.inter`` file: tab-separated, typed header with ``user_id`` and ``item_id`` columns."""
    path = Path(path)
    if not path.is_file():
        raise RecsysError(f"{path} does not exist; point it at a RecBole atomic .inter file.")
    report: Counter = Counter()
    with open(path) as f:
        header = [h.split(":")[0] for h in f.readline().rstrip("\n").split("\t")]
        for required in ("user_id", "item_id"):
            if required not in header:
                raise RecsysError(f"{path}:1: the header has no {required} column (found {header}); RecBole files "
                                  "start with e.g. 'user_id:token\\titem_id:token\\ttimestamp:float'.")
        u_col, i_col = header.index("user_id"), header.index("item_id")
        t_col = header.index("timestamp") if "timestamp" in header else None
        rows = []
        for number, line in enumerate(f, start=2):
            if not line.strip():
                continue
            fields = line.rstrip("\n").split("\t")
            if len(fields) != len(header):
                raise RecsysError(f"{path}:{number}: {len(fields)} fields but the header has {len(header)} "
                                  "(tab-separated); fix or drop that line (a field may not contain a tab).")
            try:
                stamp = float(fields[t_col]) if t_col is not None else None
            except ValueError:
                raise RecsysError(f"{path}:{number}: timestamp {fields[t_col]!r} is not a number.") from None
            rows.append((fields[u_col], fields[i_col], stamp))
    return _from_rows(str(path), rows, report)


def kcore(data: InteractionList, k: int) -> InteractionList:
    """Repeatedly drop users and items with fewer than ``k`` interactions until none is left.

    Both sides are filtered in every pass (the official VAT code only converges on items).
    """
    keep = np.ones(len(data.users), dtype=bool)
    while True:
        user_counts = np.bincount(data.users[keep], minlength=len(data.user_ids))
        item_counts = np.bincount(data.items[keep], minlength=len(data.item_ids))
        drop = keep & ((user_counts[data.users] < k) | (item_counts[data.items] < k))
        if not drop.any():
            break
        keep &= ~drop
    if not keep.any():
        raise RecsysError(f"{data.source}: no interactions survive a {k}-core filter; lower k.")
    users, user_map = np.unique(data.users[keep], return_inverse=True)
    items, item_map = np.unique(data.items[keep], return_inverse=True)
    report = {**data.report, f"interactions_removed_by_{k}_core": int((~keep).sum())}
    return InteractionList(data.source, user_map.astype(np.int64), item_map.astype(np.int64),
                           None if data.timestamps is None else data.timestamps[keep],
                           data.user_ids[users], data.item_ids[items], report)


def split_per_user(data: InteractionList, test_fraction: float = 0.2, valid_fraction: float = 0.0,
                   seed: int = 0, name: str | None = None) -> InteractionData:
    """Per-user split: chronological when timestamps exist, otherwise a seeded shuffle.

    Each user keeps at least one training interaction; the last ``test_fraction`` of a user's
    interactions (rounded down) go to test and the ``valid_fraction`` before them to validation.
    """
    if not 0 < test_fraction < 1 or not 0 <= valid_fraction < 1 - test_fraction:
        raise RecsysError(f"test_fraction={test_fraction} and valid_fraction={valid_fraction} must satisfy "
                          "0 < test, 0 <= valid, test + valid < 1.")
    rng = np.random.default_rng(seed)
    n_users, n_items = len(data.user_ids), len(data.item_ids)
    order = np.lexsort((rng.random(len(data.users)),
                        data.timestamps if data.timestamps is not None else np.zeros(len(data.users)), data.users))
    users, items = data.users[order], data.items[order]
    starts = np.searchsorted(users, np.arange(n_users + 1))
    part = np.zeros(len(users), dtype=np.int8)  # 0 train, 1 valid, 2 test
    for u in range(n_users):
        lo, hi = starts[u], starts[u + 1]
        n = hi - lo
        n_test = int(n * test_fraction)
        n_valid = int(n * valid_fraction)
        n_test, n_valid = min(n_test, n - 1), min(n_valid, max(n - 1 - n_test, 0))
        part[hi - n_test : hi] = 2
        part[hi - n_test - n_valid : hi - n_test] = 1
    pick = lambda p: to_csr(users[part == p], items[part == p], n_users, n_items)  # noqa: E731
    return InteractionData(name or Path(data.source).stem, n_users, n_items, pick(0), pick(2),
                           pick(1) if valid_fraction > 0 else None, report=dict(data.report))


def split_validation(data: InteractionData, valid_fraction: float, seed: int) -> InteractionData:
    """Move a seeded ``valid_fraction`` of each user's training interactions to a validation split
    (for data that comes with train and test only, such as the LightGCN Gowalla split, which has no
    timestamps); every user keeps at least one training interaction."""
    if not 0 < valid_fraction < 1:
        raise RecsysError(f"valid_fraction={valid_fraction} must lie in (0, 1).")
    rng = np.random.default_rng(seed)
    train = data.train.tocsr()
    degree = np.diff(train.indptr)
    users = np.repeat(np.arange(data.n_users), degree)
    rank = np.empty(train.nnz, dtype=np.int64)  # a random order within each user's row
    order = np.lexsort((rng.random(train.nnz), users))
    rank[order] = np.arange(train.nnz) - np.repeat(train.indptr[:-1], degree)
    # what is left after int((1 - fraction) * n) stay in train, as VAT's int() splits leave validation the
    # remainder (a user with 6 interactions gives 1), but never a user's last training interaction
    n_valid = np.minimum(degree - (degree * (1 - valid_fraction)).astype(np.int64), np.maximum(degree - 1, 0))
    to_valid = rank < n_valid[users]
    items = train.indices
    pick = lambda mask: to_csr(users[mask], items[mask], data.n_users, data.n_items)  # noqa: E731
    return InteractionData(data.name, data.n_users, data.n_items, pick(~to_valid), data.test, pick(to_valid),
                           report={**data.report, "training_interactions_moved_to_validation": int(to_valid.sum())})


def sampled_users(n_total: int, n_users: int, seed: int) -> np.ndarray:
    """The sorted user ids ``subsample_users`` keeps (also what a study of the other users leaves out)."""
    return np.sort(np.random.default_rng(seed).choice(n_total, size=min(n_users, n_total), replace=False))


def subsample_users(data: InteractionData, n_users: int, seed: int) -> InteractionData:
    """A seeded sample of users (for CPU budgets); items left without training interactions are dropped."""
    if n_users >= data.n_users:
        return data
    users = sampled_users(data.n_users, n_users, seed)
    train = data.train[users]
    items = np.flatnonzero(np.asarray(train.sum(axis=0)).ravel() > 0)
    test = data.test[users][:, items]
    valid = None if data.valid is None else data.valid[users][:, items].tocsr()
    report = {**data.report, "users_left_out_by_sampling": data.n_users - n_users,
              "test_interactions_with_dropped_items": int(data.test[users].nnz - test.nnz)}
    return InteractionData(f"{data.name}-u{n_users}", n_users, len(items), train[:, items].tocsr(), test.tocsr(),
                           valid, report)
