"""Your own arrays or tables as a multi-task dataset, from files and a config, no code (``dataset=files``).

Formats, chosen by the path:

* ``.npz``: named arrays (``numpy.savez``), read one array at a time;
* a folder of ``.npy`` files: one array per file, named by the file's stem (``x.npy`` is the array ``x``), opened
  memory-mapped (``numpy.load(mmap_mode="r")``) so that only the rows a split needs are read into memory;
* ``.pt``: a dict of tensors (``torch.save``), read with ``torch.load(weights_only=True)``;
* a table: ``.csv`` or ``.csv.gz`` (UTF-8, comma-separated, a header line of column names; read with the standard
  library's ``csv`` module, no pandas) or ``.parquet`` (read with pyarrow: ``pip install 'mtl-train[tables]'``).
  Each column is an array of its own; ``inputs`` is a list of columns (``[age, bmi, bp]``) or one pattern
  (``"f*"``, ``"pixel_*"``: shell-style, :func:`fnmatch.fnmatchcase`, matched against the column names in file
  order, leaving out the target and split columns), stacked into ``(N, F)`` vectors. A CSV column whose cells are
  all whole numbers (``3``, not ``3.0``) is integer, class labels; one of numbers is float, with an empty cell
  read as NaN (a regression target's "no label", for ``task.<t>.missing_label: .nan``). Empty cells are an error in
  an integer target column (class labels mark "no label" with a number such as -1), in the split column and, as
  NaN, in the inputs; text is an error in an input or target column. Parquet's integer, boolean and floating
  columns are read the same way, its nulls as empty cells.

Splits come from one of three places: one file (or folder) per split (``train``, ``val``, ``test``); a ``split``
array (or column) in the single file (``train``/``val``/``test``, or ``0``/``1``/``2``), which keeps the file's row
order; or ``fractions`` of a permutation seeded by ``seed``, whose order is kept (so any prefix of a split is a
random sample).

Inputs become float32 ``(N, C, *spatial)``: ``(N, F)`` is a vector of ``F`` features, ``(N, C, L)`` a 1-D signal,
``(N, C, H, W)`` an image; with ``add_channel_axis`` an ``(N, L)`` signal or ``(N, H, W)`` image gets ``C = 1``.
With ``normalize``, every channel (feature, for vectors) is shifted and scaled by the mean and population standard
deviation of the TRAIN split only; the statistics are kept in ``sources["normalization"]``. Integer (and boolean)
targets become int64 class indices, floating targets float32 regression targets. A table is read into such named
arrays (its columns, and the stacked inputs) and goes the same way from there.
"""

from __future__ import annotations

import csv
import dataclasses
import difflib
import gzip
import math
import zipfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from mtl_train.data.base import MultiTaskData, TensorSplit, mapped_tensor
from mtl_train.data.sources import file_sources, log_sources
from mtl_train.errors import ConfigError

SPLITS = ("train", "val", "test")
DEFAULT_FRACTIONS = (0.8, 0.1, 0.1)
FRACTION_TOLERANCE = 1e-6
CHUNK_ROWS = 4096  # rows read at a time to check and measure memory-mapped inputs
FORMATS = ("an .npz file, a .pt file (a dict of tensors), a folder of .npy files or a table (.csv, .csv.gz, "
           ".parquet)")
LISTED_COLUMNS = 20
"""At most this many column names are listed in a message (then a count of the rest)."""


@dataclass
class ArrayFile:
    """The arrays of one file (or folder of ``.npy`` files), by name, and where they live on disk.

    ``key`` is the config key that named it (``dataset.path``, ``dataset.train``, ...), for error messages.
    """

    key: str
    path: Path
    arrays: Mapping[str, np.ndarray]
    files: dict[str, Path]
    loaded: dict[str, np.ndarray] = field(default_factory=dict)

    def get(self, name: str, key: str) -> np.ndarray:
        """The array ``name`` (named by the config key ``key``); a :class:`ConfigError` listing the arrays present
        when there is none."""
        if name not in self.arrays:
            present = ", ".join(sorted(self.arrays)) or "no arrays"
            raise ConfigError(f"{key}={name!r} is not an array in {self.path} ({self.key}); it holds: {present}; "
                              f"set {key} to one of them")
        if name not in self.loaded:  # an .npz file reads an array each time it is indexed
            try:
                self.loaded[name] = self.arrays[name]
            except ValueError as error:  # an object array, which needs pickle
                raise ConfigError(f"{key}={name!r} in {self.path} cannot be read without pickle ({error}); save it "
                                  "as a numeric array") from None
        return self.loaded[name]

    def inputs(self, spec: str | Sequence[str], claimed: Mapping[str, str]) -> np.ndarray:
        """The input array named by ``dataset.inputs`` (``spec``); a list of columns is for tables only.
        ``claimed`` (the target and split columns of a table) is not used here."""
        if not isinstance(spec, str):
            raise ConfigError(f"dataset.inputs={list(spec)} is a list of columns, which only a table (.csv, .parquet) "
                              f"has; {self.path} holds arrays: set dataset.inputs to the name of one array")
        return self.get(spec, "dataset.inputs")

    def target(self, name: str, key: str) -> np.ndarray:
        """The target array ``name`` (named by the config key ``key``)."""
        return self.get(name, key)

    def split(self, name: str) -> np.ndarray:
        """The per-row split array ``name`` (named by ``dataset.split``)."""
        return self.get(name, "dataset.split")

    def files_read(self, names: Sequence[str]) -> list[Path]:
        """The files on disk that hold the arrays ``names`` (the one file, or their ``.npy`` files)."""
        return sorted({self.files.get(name, self.path) for name in names})


@dataclass
class Column:
    """One parsed column of a table: ``values`` are int64 (every cell a whole number), float64 (numbers; an empty
    cell is NaN), bool (Parquet), text or objects (Parquet's other types); ``empty`` holds the rows of its empty
    cells (Parquet: nulls), and ``integer`` whether its non-empty cells are whole numbers (class labels)."""

    values: np.ndarray
    empty: np.ndarray
    integer: bool


@dataclass
class TableFile:
    """The columns of a CSV or Parquet table (module docstring), parsed when first used, with the methods of
    :class:`ArrayFile` that :class:`FilesDataset` calls (``inputs``, ``target``, ``split``, ``files_read``).

    ``read`` parses the column of a name; ``place`` names a row in messages (for a CSV file, with its line).
    """

    key: str
    path: Path
    columns: list[str]
    n_rows: int
    read: Callable[[str], Column]
    place: Callable[[int], str]
    parsed: dict[str, Column] = field(default_factory=dict)
    stacked: dict[tuple[str, ...], np.ndarray] = field(default_factory=dict)

    def column(self, name: str, key: str) -> Column:
        """The column ``name`` (named by the config key ``key``); a :class:`ConfigError` listing the columns (and
        the closest names) when there is none."""
        if name not in self.columns:
            close = difflib.get_close_matches(name, self.columns, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise ConfigError(f"{key}={name!r} is not a column of {self.path} ({self.key}); {hint}its columns: "
                              f"{listed(self.columns)}; set {key} to one of them")
        if name not in self.parsed:
            self.parsed[name] = self.read(name)
        return self.parsed[name]

    def numbers(self, name: str, key: str) -> np.ndarray:
        """The values of the column ``name``, which must be numbers (or empty); else a :class:`ConfigError` naming
        the first cell that is not."""
        values = self.column(name, key).values
        if values.dtype.kind not in "biuf":
            row = first_non_number(values)
            raise ConfigError(f"column {name!r} of {self.path} ({key}) holds {values[row:row + 1].tolist()[0]!r} in "
                              f"{self.place(row)}, not a number; an input or target column holds numbers only "
                              "(an empty cell for a missing regression value)")
        return values

    def input_columns(self, spec: str | Sequence[str], claimed: Mapping[str, str]) -> list[str]:
        """The columns that ``dataset.inputs`` (``spec``) names: a list of columns, or a pattern matched in file
        order (module docstring). ``claimed`` maps the target and split columns to their keys: a pattern leaves
        them out, a list may not hold them."""
        if isinstance(spec, str):
            matched = [name for name in self.columns if fnmatchcase(name, spec)]
            chosen = [name for name in matched if name not in claimed]
            if not chosen:
                left_out = " but target or split columns, which are left out" if matched else ""
                raise ConfigError(f"dataset.inputs={spec!r} matches no column of {self.path} ({self.key}){left_out};"
                                  f" its columns: {listed(self.columns)}; set dataset.inputs to a pattern (* matches "
                                  "any characters, e.g. 'f*') or a list of columns, e.g. [age, bmi]")
            return chosen
        if not spec or len(set(spec)) != len(spec):
            raise ConfigError(f"dataset.inputs={list(spec)} must name each input column once, e.g. "
                              "'dataset.inputs=[age,bmi]' (or a pattern: dataset.inputs='f*')")
        for name in spec:
            self.column(name, "dataset.inputs")
            if name in claimed:
                raise ConfigError(f"dataset.inputs lists {name!r}, the column of {claimed[name]}; a target among the "
                                  f"inputs gives its answer away: remove {name!r} from dataset.inputs")
        return list(spec)

    def inputs(self, spec: str | Sequence[str], claimed: Mapping[str, str]) -> np.ndarray:
        """The input columns (:meth:`input_columns`) stacked as float32 ``(N, F)`` vectors; an empty, NaN or
        infinite cell is a :class:`ConfigError` naming its column and first row."""
        names = tuple(self.input_columns(spec, claimed))
        if names not in self.stacked:
            stacked = np.empty((self.n_rows, len(names)), dtype=np.float32)
            for index, name in enumerate(names):
                stacked[:, index] = self.numbers(name, "dataset.inputs")
                bad = np.flatnonzero(~np.isfinite(stacked[:, index]))
                if len(bad):
                    raise ConfigError(f"column {name!r} of {self.path} (dataset.inputs) is empty, NaN or infinite in "
                                      f"{len(bad)} of {self.n_rows} rows, the first {self.place(int(bad[0]))}; fill "
                                      "them in (impute) or remove those rows before training")
            self.stacked[names] = stacked
        return self.stacked[names]

    def target(self, name: str, key: str) -> np.ndarray:
        """The target column ``name`` (named by ``key``): numbers, and no empty cell among class labels."""
        values = self.numbers(name, key)
        column = self.column(name, key)
        if column.integer and len(column.empty):
            raise ConfigError(f"column {name!r} of {self.path} ({key}) holds class labels (whole numbers) but is "
                              f"empty in {self.place(int(column.empty[0]))}; write -1 in its empty cells and set "
                              "task.<t>.missing_label=-1 for the task of this target (regression values: write them "
                              "as floats, 3.0)")
        return values

    def split(self, name: str) -> np.ndarray:
        """The split column ``name`` (named by ``dataset.split``), without empty cells."""
        column = self.column(name, "dataset.split")
        if len(column.empty):
            raise ConfigError(f"column {name!r} of {self.path} (dataset.split) is empty in "
                              f"{self.place(int(column.empty[0]))}; every row needs train/val/test or 0/1/2")
        return column.values

    def files_read(self, names: Sequence[str]) -> list[Path]:
        """The table's one file (whichever columns ``names`` were read)."""
        return [self.path]


DataFile = ArrayFile | TableFile


def listed(names: Sequence[str]) -> str:
    """``names`` joined by commas, the first :data:`LISTED_COLUMNS` of them (then a count of the rest)."""
    if not names:
        return "none"
    more = len(names) - LISTED_COLUMNS
    return ", ".join(names[:LISTED_COLUMNS]) + (f", ... ({more} more)" if more > 0 else "")


def first_non_number(values: np.ndarray) -> int:
    """The first row of the text or object column ``values`` that is neither empty nor a number."""
    for row, value in enumerate(values.tolist()):
        if value is None or value == "":
            continue
        if isinstance(value, str):
            try:
                float(value)
                continue
            except ValueError:
                pass
        return row
    return 0


def parse_cells(cells: Sequence[str]) -> Column:
    """The :class:`Column` of a CSV column's ``cells``: int64 when every cell is a whole number, float64 when every
    cell is a number or empty (NaN), else the cells' text (stripped)."""
    count = len(cells)
    none = np.zeros(0, dtype=np.int64)
    try:
        return Column(np.fromiter(map(int, cells), np.int64, count), none, True)
    except (ValueError, OverflowError):
        pass
    try:
        return Column(np.fromiter(map(float, cells), np.float64, count), none, False)
    except ValueError:
        pass
    text = [cell.strip() for cell in cells]
    empty = np.flatnonzero(np.fromiter((not cell for cell in text), bool, count))
    try:
        values = np.fromiter((float(cell) if cell else np.nan for cell in text), np.float64, count)
    except ValueError:
        return Column(np.array(text, dtype=str), empty, False)
    filled = [cell for cell in text if cell]
    return Column(values, empty, bool(filled) and all(map(is_whole, filled)))


def is_whole(cell: str) -> bool:
    """Whether the text ``cell`` is a whole number (as ``int()`` reads it: ``3``, ``-2``, not ``3.0``)."""
    try:
        int(cell)
    except ValueError:
        return False
    return True


def check_header(key: str, path: Path, header: Sequence[str] | None) -> list[str]:
    """The column names of a table's ``header``: present, non-empty and distinct."""
    names = [name.strip() for name in header or []]
    if not names:
        raise ConfigError(f"{key}={path} is empty; its first line must name the columns (age,bmi,label)")
    if len(names) == 1 and any(separator in names[0] for separator in ";\t"):
        raise ConfigError(f"{key}={path} has one column, {names[0]!r}; separate the columns with commas")
    empty = [index for index, name in enumerate(names) if not name]
    if empty:
        raise ConfigError(f"{key}={path}: column {empty[0]} of the header has no name; name every column")
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ConfigError(f"{key}={path} has more than one column named {repeated[0]!r}; give every column its own "
                          "name")
    return names


def open_csv(key: str, path: Path) -> TableFile:
    """The table of a UTF-8, comma-separated ``.csv`` (or ``.csv.gz``) file with a header line; blank lines are
    skipped, and every other line must have one cell per column."""
    opener = gzip.open if path.name.endswith(".gz") else open
    records, lines = [], []
    try:
        with opener(path, "rt", newline="", encoding="utf-8-sig") as file:
            reader = csv.reader(file)
            header = next(reader, None)
            for record in reader:
                if record:
                    records.append(record)
                    lines.append(reader.line_num)
    except (OSError, EOFError, UnicodeDecodeError, csv.Error) as error:
        raise ConfigError(f"{key}={path} is not a readable CSV file ({error}); write it as UTF-8 text, "
                          "comma-separated, with a header line") from None
    columns = check_header(key, path, header)
    for record, line in zip(records, lines):
        if len(record) != len(columns):
            raise ConfigError(f"line {line} of {path} ({key}) has {len(record)} cells, its header {len(columns)}; "
                              "give every line one cell per column (quote cells that hold commas)")

    def read(name: str) -> Column:
        index = columns.index(name)
        return parse_cells([record[index] for record in records])

    return TableFile(key, path, columns, len(records), read, lambda row: f"row {row} (line {lines[row]})")


def open_parquet(key: str, path: Path) -> TableFile:
    """The table of a ``.parquet`` file, read with pyarrow (:func:`arrow_column`)."""
    try:
        import pyarrow.parquet as parquet
    except ImportError:
        raise ConfigError(f"reading {path} needs pyarrow: pip install 'mtl-train[tables]'") from None
    try:
        table = parquet.read_table(path)
    except Exception as error:  # pyarrow raises ArrowInvalid, OSError, ... for a file that is not Parquet
        reason = " ".join(str(error).split())[:200]
        raise ConfigError(f"{key}={path} is not a readable Parquet file ({reason}); write it with "
                          "pyarrow.parquet.write_table (or pandas' to_parquet)") from None
    columns = check_header(key, path, table.column_names)
    return TableFile(key, path, columns, table.num_rows, lambda name: arrow_column(table.column(name)),
                     lambda row: f"row {row}")


def arrow_column(column: Any) -> Column:
    """The :class:`Column` of a pyarrow ``ChunkedArray``: integers and booleans as they are (with nulls: float64,
    NaN), floats and decimals as float64 (nulls NaN), strings as text (nulls empty), other types as objects."""
    import pyarrow as pa

    kind = column.type
    if pa.types.is_dictionary(kind):
        column, kind = column.cast(kind.value_type), kind.value_type
    empty = np.flatnonzero(column.is_null().to_numpy())
    whole = pa.types.is_integer(kind) or pa.types.is_boolean(kind)
    if whole and len(empty) == 0:
        return Column(column.to_numpy(), empty, True)
    if whole or pa.types.is_floating(kind) or pa.types.is_decimal(kind):
        return Column(column.cast(pa.float64()).fill_null(np.nan).to_numpy(), empty, whole)
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        return Column(np.array(column.fill_null("").to_pylist(), dtype=str), empty, False)
    return Column(np.array(column.to_pylist(), dtype=object), empty, False)


def open_data_file(key: str, value: str) -> DataFile:
    """The arrays at ``value`` (the config key ``key``): an ``.npz`` or ``.pt`` file, a folder of ``.npy`` files,
    or a table (module docstring)."""
    path = Path(value).expanduser().absolute()
    if not path.exists():
        raise ConfigError(f"{key}={value} does not exist ({path}); set {key} to {FORMATS}")
    if path.is_dir():
        files = {file.stem: file for file in sorted(path.glob("*.npy"))}
        if not files:
            raise ConfigError(f"{key}={value} is a folder without .npy files; set {key} to {FORMATS}")
        return ArrayFile(key, path, {name: open_npy(key, file) for name, file in files.items()}, files)
    if path.name.endswith((".csv", ".csv.gz")):
        return open_csv(key, path)
    if path.suffix == ".parquet":
        return open_parquet(key, path)
    if path.suffix == ".npz":
        try:
            return ArrayFile(key, path, np.load(path, allow_pickle=False), {})
        except (OSError, ValueError, zipfile.BadZipFile) as error:
            raise ConfigError(f"{key}={value} is not a readable .npz file ({error}); write it with "
                              "numpy.savez") from None
    if path.suffix == ".pt":
        return ArrayFile(key, path, read_pt(key, path), {})
    raise ConfigError(f"{key}={value} has an unknown format ({path.suffix or 'no suffix'}); set {key} to {FORMATS}")


def open_npy(key: str, file: Path) -> np.ndarray:
    """The array of the ``.npy`` ``file`` (in the folder the config key ``key`` names), memory-mapped."""
    try:
        return np.load(file, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as error:  # not an .npy file, or an object array (which needs pickle)
        raise ConfigError(f"{file} (in {key}) is not a readable numeric .npy file ({error}); write it with "
                          "numpy.save") from None


def read_pt(key: str, path: Path) -> dict[str, np.ndarray]:
    """The named arrays of a ``.pt`` file holding a dict of tensors (numbers and lists are taken as arrays)."""
    try:
        content = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for a file that is not a tensor pickle
        reason = " ".join(str(error).split())[:200]
        raise ConfigError(f"{key}={path} is not a readable .pt file ({reason}); save a dict of tensors with "
                          "torch.save") from None
    if not isinstance(content, dict):
        raise ConfigError(f"{key}={path} holds a {type(content).__name__}, not a dict of tensors; save "
                          "{name: tensor} with torch.save")
    return {str(name): as_numpy(value) for name, value in content.items()}


def as_numpy(value: Any) -> np.ndarray:
    """A tensor (half precision widened to float32, which numpy can hold) or a list as a numpy array."""
    if isinstance(value, Tensor):
        return (value.float() if value.dtype in (torch.bfloat16, torch.float16) else value).numpy()
    return np.asarray(value)


def check_fractions(fractions: Sequence[float]) -> tuple[float, float, float]:
    """``fractions`` as (train, val, test) fractions: three numbers >= 0 summing to 1."""
    values = tuple(float(f) for f in fractions)
    if len(values) != 3 or min(values) < 0 or abs(sum(values) - 1.0) > FRACTION_TOLERANCE:
        raise ConfigError(f"dataset.fractions={list(fractions)} must be three numbers >= 0 (train, val, test) "
                          "summing to 1, e.g. dataset.fractions=[0.8,0.1,0.1]")
    return values  # type: ignore[return-value]


def fraction_indices(n_rows: int, fractions: Sequence[float], seed: int) -> dict[str, Tensor]:
    """Row indices of each split: a permutation of ``n_rows`` seeded by ``seed``, cut into ``round(f * n_rows)``
    train and val rows and the rest for test."""
    train, val, _ = check_fractions(fractions)
    perm = torch.randperm(n_rows, generator=torch.Generator().manual_seed(seed))
    n_train, n_val = round(train * n_rows), round(val * n_rows)
    return {"train": perm[:n_train], "val": perm[n_train : n_train + n_val], "test": perm[n_train + n_val :]}


def split_array_indices(split: np.ndarray, where: str) -> dict[str, Tensor]:
    """Row indices of each split from a per-row ``split`` array of ``train``/``val``/``test`` or ``0``/``1``/``2``
    (``where`` names it in errors)."""
    values = np.asarray(split)
    if values.ndim != 1:
        raise ConfigError(f"{where} has shape {values.shape}; it must hold one value per row, shape (N,)")
    if values.dtype.kind in "US":
        codes = {name: values.astype(str) == name for name in SPLITS}
    elif values.dtype.kind in "iu":
        codes = {name: values == number for number, name in enumerate(SPLITS)}
    else:
        raise ConfigError(f"{where} has dtype {values.dtype}; it must hold train/val/test or 0/1/2")
    known = np.logical_or.reduce(list(codes.values()))
    if not known.all():
        unknown = sorted({str(v) for v in values[~known][:1000]})[:5]
        raise ConfigError(f"{where} holds {', '.join(unknown)}; its values must be train/val/test or 0/1/2")
    return {name: torch.from_numpy(np.flatnonzero(mask)) for name, mask in codes.items()}


def row_count(array: np.ndarray) -> int:
    """The number of rows (length of the first axis) of ``array``; 0 for a scalar."""
    return array.shape[0] if array.ndim > 0 else 0


def rows(array: np.ndarray, indices: Tensor | None) -> np.ndarray:
    """The rows ``indices`` of ``array`` (all rows when None) as an in-memory array (a memory map is read here)."""
    return np.array(array if indices is None else array[indices.numpy()])


def input_split(array: np.ndarray, where: str, add_channel_axis: bool, indices: Tensor | None) -> TensorSplit:
    """The inputs ``(N, C, *spatial)`` of the rows ``indices`` of ``array`` (all rows when None; module docstring),
    as a split without targets: a memory map of the native byte order stays on disk (a tensor over the map, in the
    file's dtype, whose rows the split names in ``input_rows``; batches are read and converted to float32 when
    gathered, :class:`TensorSplit`); any other array is read into memory as float32. A non-numeric dtype or an
    unsupported rank is a :class:`ConfigError`."""
    if array.dtype.kind not in "biuf":
        raise ConfigError(f"{where} has dtype {array.dtype}; inputs must be a numeric (integer or float) array")
    ranks = (2, 3) if add_channel_axis else (2, 3, 4)
    if array.ndim not in ranks:
        shapes = ("(N, L) or (N, H, W) with dataset.add_channel_axis=true" if add_channel_axis
                  else "(N, F), (N, C, L) or (N, C, H, W); for (N, H, W) images set dataset.add_channel_axis=true")
        raise ConfigError(f"{where} has shape {array.shape}; inputs must be {shapes}")
    if on_disk(array):
        inputs, input_rows = mapped_tensor(array), indices
    else:
        inputs, input_rows = torch.from_numpy(rows(array, indices).astype(np.float32, copy=False)), None
    return TensorSplit(inputs.unsqueeze(1) if add_channel_axis else inputs, {}, input_rows)


def on_disk(array: np.ndarray) -> bool:
    """Whether ``array`` is a memory map that inputs can stay on (its rows read per batch): an ``.npy`` file of
    the machine's byte order."""
    return isinstance(array, np.memmap) and array.dtype.isnative


def row_chunks(n_rows: int) -> list[Tensor]:
    """``0 .. n_rows - 1`` in chunks of :data:`CHUNK_ROWS` rows."""
    return list(torch.arange(n_rows).split(CHUNK_ROWS))


def check_finite(split: TensorSplit, where: str, name: str, indices: Tensor | None) -> None:
    """A :class:`ConfigError` naming the count and the first file row (``indices`` maps the split ``name``'s rows to
    file rows; None: the same) of NaN or infinite inputs of ``split`` (read :data:`CHUNK_ROWS` rows at a time)."""
    if not split.inputs.is_floating_point():
        return
    count, first = 0, None
    for chunk in row_chunks(len(split)):
        bad = ~torch.isfinite(split.batch(chunk)[0])
        count += int(bad.sum())
        if first is None and count:
            first = int(chunk[bad.flatten(1).any(1)][0])
    if count:
        row = first if indices is None else int(indices[first])
        raise ConfigError(f"{where} holds NaN or infinite values ({count} in the {name} split, the first "
                          f"in row {row}); remove or impute them before training")


def target_tensor(array: np.ndarray, where: str) -> Tensor:
    """Int64 class indices from an integer or boolean ``array``, float32 regression targets from a float one."""
    if array.dtype.kind in "biu":
        return torch.from_numpy(array.astype(np.int64))
    if array.dtype.kind == "f":
        return torch.from_numpy(array.astype(np.float32))
    raise ConfigError(f"{where} has dtype {array.dtype}; a target must be an integer array (class indices) or a "
                      "float array (regression targets)")


def channel_statistics(inputs: Tensor) -> tuple[Tensor, Tensor]:
    """Per-channel mean and population standard deviation of ``(N, C, *spatial)`` inputs (computed in float64); a
    constant channel gets standard deviation 1, so it is only shifted."""
    return split_statistics(TensorSplit(inputs, {}))


def split_statistics(split: TensorSplit) -> tuple[Tensor, Tensor]:
    """:func:`channel_statistics` of a split's model inputs, read :data:`CHUNK_ROWS` rows at a time: the mean, then
    the mean squared deviation from it, both summed in float64."""
    dims = [0, *range(2, split.inputs.dim())]
    chunks = row_chunks(len(split))
    sums = sum(split.batch(chunk)[0].double().sum(dim=dims) for chunk in chunks)
    count = len(split) * math.prod(split.inputs.shape[2:])
    mean = sums / count
    shape = (1, -1, *([1] * (split.inputs.dim() - 2)))
    squares = sum(((split.batch(chunk)[0].double() - mean.view(shape)) ** 2).sum(dim=dims) for chunk in chunks)
    std = (squares / count).sqrt()
    return mean.float(), torch.where(std > 0, std, 1.0).float()


class FilesDataset:
    """Train/val/test splits of arrays read from files (module docstring) as a :class:`MultiTaskData`.

    Args:
        path: one file (or folder of ``.npy`` files) holding every split; or null with ``train``/``val``/``test``.
        train: the train split's file (or folder), with ``val`` and ``test``; null when ``path`` is set.
        val: the val split's file (or folder).
        test: the test split's file (or folder).
        inputs: name of the input array; for a table, a list of columns or a pattern (module docstring).
        targets: ``{target name: array (or column) name}``; task sets refer to the target names
            (``task.<t>.target``).
        split: name of a per-row array (or column) in ``path`` assigning rows to train/val/test (or 0/1/2); null:
            ``fractions``.
        fractions: train, val and test fractions of ``path``'s rows, drawn by ``seed`` (null: 0.8, 0.1, 0.1).
        seed: seed of the ``fractions`` permutation.
        normalize: standardise inputs per channel with the train split's mean and standard deviation.
        add_channel_axis: the inputs have no channel axis (``(N, L)`` signals, ``(N, H, W)`` images); add one.
        num_train: keep only the first ``num_train`` train rows, and at most as many val rows (None: all).
        num_test: keep only the first ``num_test`` test rows (None: all).
    """

    def __init__(
        self,
        path: str | None = None,
        train: str | None = None,
        val: str | None = None,
        test: str | None = None,
        inputs: str | list[str] = "inputs",
        targets: dict[str, str] | None = None,
        split: str | None = None,
        fractions: list[float] | None = None,
        seed: int = 0,
        normalize: bool = True,
        add_channel_axis: bool = False,
        num_train: int | None = None,
        num_test: int | None = None,
    ) -> None:
        self.path = path
        self.split_paths = {"train": train, "val": val, "test": test}
        self.inputs = inputs
        self.targets = dict(targets or {})
        self.split = split
        self.fractions = fractions
        self.seed = seed
        self.normalize = normalize
        self.add_channel_axis = add_channel_axis
        self.num_train = num_train
        self.num_test = num_test

    def check_settings(self) -> None:
        """The keys name one way to split (module docstring), valid fractions and at least one target."""
        given = [name for name, value in self.split_paths.items() if value is not None]
        if self.path is not None and given:
            raise ConfigError(f"dataset.path and dataset.{given[0]} are both set; give one file for all splits "
                              "(dataset.path) or one per split (dataset.train, dataset.val, dataset.test)")
        if self.path is None and not given:
            raise ConfigError("dataset.path is not set; set it to your data (dataset.path=data/my.npz), or give one "
                              "file per split (dataset.train, dataset.val and dataset.test)")
        if self.path is None and len(given) < 3:
            missing = [f"dataset.{name}" for name in SPLITS if self.split_paths[name] is None]
            raise ConfigError(f"{', '.join(missing)} not set; give one file for all splits (dataset.path=FILE) or "
                              "one per split (dataset.train, dataset.val and dataset.test)")
        if self.path is None and (self.split is not None or self.fractions is not None):
            key = "split" if self.split is not None else "fractions"
            raise ConfigError(f"dataset.{key} splits dataset.path, but the splits come from their own files "
                              f"(dataset.train/val/test); remove dataset.{key}")
        if self.split is not None and self.fractions is not None:
            raise ConfigError("dataset.split and dataset.fractions are both set; the split array decides, so remove "
                              "dataset.fractions (or dataset.split to draw the splits by seed)")
        if self.fractions is not None:
            check_fractions(self.fractions)
        if not self.targets:
            raise ConfigError("dataset.targets is empty; map each target name to its array, e.g. "
                              "'dataset.targets={label: y}'")
        for key, value in (("num_train", self.num_train), ("num_test", self.num_test)):
            if value is not None and value < 1:
                raise ConfigError(f"dataset.{key}={value} must be >= 1 (or null for all rows)")

    def build(self) -> MultiTaskData:
        """Read the arrays, split them, convert and normalise them; ``sources`` lists the files read with their
        checksums, a table's input columns, and the normalisation statistics (also logged)."""
        self.check_settings()
        if self.path is not None:
            opened = [open_data_file("dataset.path", self.path)]
        else:
            opened = [open_data_file(f"dataset.{name}", self.split_paths[name]) for name in SPLITS]
        input_columns = self.table_input_columns(opened)
        if self.path is not None:
            parts = self.split_single(opened[0])
        else:
            parts = {name: self.read_split(file, name, None) for name, file in zip(SPLITS, opened)}
        limits = {"train": self.num_train, "val": self.num_train, "test": self.num_test}
        parts = {name: part.select(torch.arange(min(limits[name] or len(part), len(part))))
                 for name, part in parts.items()}
        self.check_consistent(parts)
        inputs = [self.inputs] if isinstance(self.inputs, str) else list(self.inputs)
        names = [*inputs, *self.targets.values(), *([self.split] if self.split else [])]
        sources = file_sources("files", [path for file in opened for path in file.files_read(names)])
        if input_columns is not None:
            sources["input_columns"] = input_columns
        if self.normalize:
            mean, std = split_statistics(parts["train"])
            parts = {name: dataclasses.replace(part, mean=mean, std=std) for name, part in parts.items()}
            sources["normalization"] = {"split": "train", "mean": mean.tolist(), "std": std.tolist()}
        # Inputs read into memory are prepared once (converted and normalised); memory-mapped ones stay on disk and
        # are prepared per batch as they are gathered (or once, when the trainer holds them on its device).
        files = dict(zip(SPLITS, opened * 3 if self.path is not None else opened))
        parts = {name: part if isinstance(files[name], ArrayFile) and on_disk(files[name].inputs(self.inputs, {}))
                 else part.to("cpu") for name, part in parts.items()}
        log_sources(sources)
        return MultiTaskData(train=parts["train"], val=parts["val"], test=parts["test"], sources=sources)

    def claimed_columns(self) -> dict[str, str]:
        """The target and split columns (arrays), each with its config key: a table's inputs leave them out."""
        claimed = {name: f"dataset.targets.{target}" for target, name in self.targets.items()}
        return {**claimed, **({self.split: "dataset.split"} if self.split is not None else {})}

    def table_input_columns(self, opened: Sequence[DataFile]) -> list[str] | None:
        """The input columns of the tables among ``opened`` (None when there is none); every table must give the
        same columns, in the same order."""
        tables = [file for file in opened if isinstance(file, TableFile)]
        chosen = [table.input_columns(self.inputs, self.claimed_columns()) for table in tables]
        for table, columns in zip(tables[1:], chosen[1:]):
            if columns != chosen[0]:
                raise ConfigError(f"dataset.inputs={self.inputs!r} gives the columns {chosen[0]} in {tables[0].path} "
                                  f"but {columns} in {table.path}; give every split's file the same input columns")
        return chosen[0] if chosen else None

    def split_single(self, source: DataFile) -> dict[str, TensorSplit]:
        """The three splits of one file, by its ``split`` array or by ``fractions``."""
        n_rows = row_count(source.inputs(self.inputs, self.claimed_columns()))
        if self.split is not None:
            split = source.split(self.split)
            where = f"dataset.split={self.split!r} in {source.path}"
            if len(split) != n_rows:
                raise ConfigError(f"{where} has {len(split)} rows, dataset.inputs={self.inputs!r} has {n_rows}; "
                                  "it needs one value per input row")
            indices = split_array_indices(split, where)
            how = f"{where} has no {{split}} rows; give every split at least one row"
        else:
            fractions = self.fractions or DEFAULT_FRACTIONS
            indices = fraction_indices(n_rows, fractions, self.seed)
            how = (f"dataset.fractions={list(fractions)} of {n_rows} rows leaves the {{split}} split empty; give every "
                   "split a larger fraction (or more rows)")
        for name in SPLITS:
            if len(indices[name]) == 0:
                raise ConfigError(how.format(split=name))
        return {name: self.read_split(source, name, indices[name]) for name in SPLITS}

    def read_split(self, source: DataFile, split: str, indices: Tensor | None) -> TensorSplit:
        """Inputs and targets of the ``split``'s rows ``indices`` of ``source`` (all rows when None), checked and
        converted."""
        array = source.inputs(self.inputs, self.claimed_columns())
        n_rows = row_count(array)
        where = f"dataset.inputs={self.inputs!r} in {source.path}"
        if n_rows == 0:
            raise ConfigError(f"{where} has no rows; {source.key} needs at least one row per split")
        part = input_split(array, where, self.add_channel_axis, indices)
        check_finite(part, where, split, indices)
        targets = {}
        for target, name in self.targets.items():
            key = f"dataset.targets.{target}"
            values = source.target(name, key)
            where_target = f"{key}={name!r} in {source.path}"
            if row_count(values) != n_rows:
                raise ConfigError(f"{where_target} has {row_count(values)} rows, {where} has {n_rows}; every "
                                  "target needs one row per input row")
            targets[target] = target_tensor(rows(values, indices), where_target)
        return dataclasses.replace(part, targets=targets)

    def check_consistent(self, parts: dict[str, TensorSplit]) -> None:
        """Every split has rows, and the same input and target shapes (beyond the row axis) as the train split."""
        for name, part in parts.items():
            if len(part) == 0:
                raise ConfigError(f"the {name} split has no rows; give it at least one")
            for target, tensor in [("inputs", part.inputs), *part.targets.items()]:
                reference = parts["train"].inputs if target == "inputs" else parts["train"].targets[target]
                if tensor.shape[1:] != reference.shape[1:]:
                    key = "dataset.inputs" if target == "inputs" else f"dataset.targets.{target}"
                    raise ConfigError(f"{key}: the {name} split's rows have shape {tuple(tensor.shape[1:])}, the "
                                      f"train split's {tuple(reference.shape[1:])}; every split needs the same shape")
                if tensor.dtype != reference.dtype:
                    raise ConfigError(f"dataset.targets.{target}: the {name} split holds {tensor.dtype}, the train "
                                      f"split {reference.dtype}; save it with the same kind of dtype in every split")
