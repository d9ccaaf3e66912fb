import polars as pl
import pytest

from schemas.mask import mask_id, mask_id_expr

CASES = [
    ("11010519491231002X", "110105********002X"),
    ("11010519491231002x", "110105********002x"),
    ("110105194912310021", "110105********0021"),  # wrong check digit: still a person's number
    ("91110000600037341L", "91110000600037341L"),  # organisations are not masked
    ("91350100M000100Y43", "91350100M000100Y43"),
    ("91110000600037341M", "911*************1M"),  # not a valid USCC: masked like anything else
    ("13812345678", "13*******78"),
    ("ABCDEFGHIJKL", "ABC*******KL"),
    ("abcd", "a**d"),
    ("abc", "***"),
    ("", ""),
    ("张三丰先生", "张***生"),
]


@pytest.mark.parametrize(("value", "masked"), CASES)
def test_mask_id(value, masked):
    assert mask_id(value) == masked


def test_mask_id_expr_matches_mask_id():
    frame = pl.DataFrame({"holder_id": [value for value, _ in CASES] + [None]})
    result = frame.select(mask_id_expr("holder_id"))
    assert result.columns == ["holder_id"]
    assert result["holder_id"].to_list() == [masked for _, masked in CASES] + [None]
