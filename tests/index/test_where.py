"""``--where`` conditions (embedkit.index.where) select the rows SQL would."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.dataset as pads
import pytest

from embedkit.errors import InputError
from embedkit.index.where import parse_where

TABLE = pa.table(
    {
        "color": ["red", "blue", None, "red", "it's"],
        "year": [2020, 2023, 2024, 2025, 2019],
        "score": [0.5, 1.5, 2.5, -1.0, 0.0],
        "ok": [True, False, True, None, False],
        "odd name": [1, 2, 3, 4, 5],
    }
)


def rows(condition: str) -> list[int]:
    keep = pads.dataset(TABLE).to_table(columns={"k": parse_where(condition)}).column("k")
    return [i for i, v in enumerate(keep.to_pylist()) if v]


@pytest.mark.parametrize(
    ("condition", "expected"),
    [
        ("color = 'red'", [0, 3]),
        ("color == 'red' AND year >= 2023", [3]),
        ("color = 'red' OR year < 2020", [0, 3, 4]),
        ("NOT (color = 'red') ", [1, 4]),  # SQL: a null color is neither
        ("color IN ('blue', 'it''s')", [1, 4]),
        ("color NOT IN ('blue')", [0, 3, 4]),
        ("color IS NULL", [2]),
        ("color is not null and ok = true", [0]),
        ("year BETWEEN 2020 AND 2024", [0, 1, 2]),
        ("score > -0.5e0 AND score <> 1.5", [0, 2, 4]),
        ('"odd name" != 3', [0, 1, 3, 4]),
        ("ok = FALSE OR (year > 2024 AND color = 'red')", [1, 3, 4]),
    ],
)
def test_conditions_select_the_rows_sql_would(condition: str, expected: list[int]) -> None:
    assert rows(condition) == expected


@pytest.mark.parametrize(
    ("condition", "message"),
    [
        ("color = red", r"expected a value .* at position 8, found 'red'"),
        ("color", r"expected a comparison .* found the end"),
        ("color = 'red' year", r"expected AND, OR or the end at position 14"),
        ("(year = 1", r"expected \) at position 9"),
        ("year ~ 1", r"cannot read '~ 1' at position 5"),
        ("colour = 'red'", r"no column 'colour'; columns: color, year"),
        ("  ", r"--where is empty"),
    ],
)
def test_bad_conditions_are_one_line_errors(condition: str, message: str) -> None:
    with pytest.raises(InputError, match=message) as err:
        parse_where(condition, ["color", "year"])
    assert "\n" not in str(err.value)
