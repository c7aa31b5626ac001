from __future__ import annotations

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.errors import ConfigurationError
from pipeline.replay.sources import Chunk, JsonLinesSource, ParquetSource, PartitionRange, open_file


def test_partition_ranges_parse_and_bad_ones_are_refused():
    assert PartitionRange.parse("3:1000-2000") == PartitionRange(3, 1000, 2000)
    for text in ("3:10", "a:1-2", "3:20-10", "-1:0-5"):
        with pytest.raises(ConfigurationError, match="--range"):
            PartitionRange.parse(text)


def test_json_lines_resume_from_a_position_and_skip_blank_lines(tmp_path):
    path = tmp_path / "requests.jsonl"
    path.write_bytes(b'{"event_id": "a"}\n\n{"event_id": "b"}\r\n{"event_id": "c"}')
    source = JsonLinesSource(path)
    assert source.ranges() == {0: (0, 3)}
    (chunk,) = source.chunks({0: 1})
    assert chunk.positions == [1, 2] and chunk.values == [b'{"event_id": "b"}', b'{"event_id": "c"}']
    assert chunk.ends() == {0: 3}


def test_parquet_of_contract_columns_becomes_requests(tmp_path):
    path = tmp_path / "requests.parquet"
    table = pa.Table.from_pylist(
        [
            {"event_id": "a", "model": None, "entity": {"account_id": 1}, "features": {"amount": 5.0}},
            {"event_id": "b", "model": "fraud_scorer", "entity": {"account_id": 2}, "features": {"amount": 7.5}},
        ]
    )
    pq.write_table(table, path)
    (chunk,) = ParquetSource(path).chunks({0: 1})
    assert [orjson.loads(v) for v in chunk.values] == [
        {"event_id": "b", "model": "fraud_scorer", "entity": {"account_id": 2}, "features": {"amount": 7.5}}
    ]
    assert chunk.positions == [1] and chunk.keys == [None]


def test_parquet_of_raw_values_keeps_them_byte_for_byte(tmp_path):
    path = tmp_path / "raw.parquet"
    pq.write_table(pa.Table.from_pylist([{"key": b"42", "value": b'{"event_id":"x"}'}]), path)
    (chunk,) = ParquetSource(path).chunks({})
    assert (chunk.keys, chunk.values, chunk.partitions) == ([b"42"], [b'{"event_id":"x"}'], [0])


def test_unreadable_files_are_one_line_errors(tmp_path):
    with pytest.raises(ConfigurationError, match="no such file"):
        open_file(tmp_path / "missing.parquet")
    (tmp_path / "broken.parquet").write_bytes(b"not parquet")
    with pytest.raises(ConfigurationError, match="not a readable Parquet file"):
        open_file(tmp_path / "broken.parquet")
    pq.write_table(pa.Table.from_pylist([{"x": 1}]), tmp_path / "other.parquet")
    with pytest.raises(ConfigurationError, match="neither a `value` column"):
        open_file(tmp_path / "other.parquet")
    (tmp_path / "requests.csv").write_text("a,b\n")
    with pytest.raises(ConfigurationError, match=r"\.jsonl or \.parquet"):
        open_file(tmp_path / "requests.csv")


def test_a_chunk_splits_by_rows_and_knows_where_each_partition_ends():
    chunk = Chunk([None] * 4, [b"a", b"b", b"c", b"d"], [3, 5, 3, 5], [10, 7, 11, 8], [None] * 4)
    assert chunk.ends() == {3: 12, 5: 9}
    assert chunk.part(1, 3).values == [b"b", b"c"] and chunk.part(1, 3).ends() == {5: 8, 3: 12}
